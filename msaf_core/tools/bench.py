"""msaf-bench: where the time of a streamed frame goes, against its two bounds.

    msaf-bench [--sizes 480x360 1024x512] [--backbones resnet18 resnet50 resnet101]
               [--repeats 10] [--warmup 3] [--threads N] [--device cpu|cuda] [--half]
               [--precision fp32|bf16] [--dim D] [--heads N] [--no-fold-bn] [--json FILE]
    msaf-bench transformer [--size 1024x512] [--dim D] [--heads N] [--json FILE]
    msaf-bench dcn [--size 480x360]
    msaf-bench profile [--sizes 1024x512] [--backbones resnet18] [--precision fp32|bf16] [--json FILE]
    msaf-bench --backends torch onnxruntime openvino [--precisions fp32 bf16 int8]
               [--checkpoint CKPT] [--export DIR] [--sizes ...] [--threads N] [--json FILE]

For each input size and backbone, in one run (so ratios hold on a noisy machine):

- ``streamed``: a frame through the Segmenter's path with a warm cache: preprocessing, one
  backbone pass, PST, DCN alignment + temporal transformer (ATT), stage transformer,
  semantic assignment, upsampling, postprocessing (argmax, copy to host);
- ``uncached``: the same frame with three backbone passes (no cache);
- ``single-frame limit``: the same backbone and a plain 1×1 classifier on F5;
- peak memory of each: tensors allocated during one call (CUDA: max allocated; CPU: from the
  profiler's allocation events), i.e. activations and temporaries, not weights.

Times are medians over ``--repeats`` after ``--warmup`` runs; the variants are interleaved.
``transformer`` times the decoupled transformer (PST + ATT) against a vanilla joint
spatio-temporal transformer (one MHSA over all 3×h×w tokens) on the same three feature maps
at the 1/8 grid, and prints time, memory and their ratio. ``profile`` runs one streamed frame
under ``torch.profiler`` (CPU) and splits each stage's time into kernel families (attention,
convolution, matrix products, bilinear sampling, the rest) with their GFLOP/s: where the
frame's time goes, and how close each family runs to the machine's arithmetic peak.

``--backends`` compares what runs the network, side by side in one run: the streamed frame
(``Segmenter.segment`` with a warm cache, preprocessing and argmax included) of a real
checkpoint (default: the bundled model) on each backend and precision that it runs
(torch: fp32, bf16; onnxruntime: fp32; openvino: fp32, bf16, int8), interleaved, with each
one's speed-up over torch fp32. Engines load ``--export DIR`` (an msaf-export folder; its
int8 graphs for int8) or else export the checkpoint once into the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import date
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
import torch.profiler
from torch import nn

from ..hardware import cpu_description
from ..config import MSAFConfig, default_dim
from ..model import MSAF, TransformerBlock, fold_batchnorm, sincos_pos_2d

STAGES = ["preprocess", "backbone", "pst", "att", "state", "assignment", "upsample",
          "postprocess"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Accumulates wall time per named stage (synchronising CUDA around each). Each stage is
    also a ``torch.profiler`` range named ``stage:<name>`` (free when nothing profiles), which
    ``msaf-bench profile`` uses to attribute kernels to stages."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.profiler.record_function("stage:" + name):
            yield
        _sync(self.device)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


class SingleFrameLimit(nn.Module):
    """The cheapest segmenter on the same backbone: F5 → 1×1 classifier → upsample."""

    def __init__(self, model: MSAF) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.cls = nn.Conv2d(model.backbone.channels["f5"], model.cfg.num_classes, 1)

    def forward(self, x: torch.Tensor, out_size) -> torch.Tensor:
        return F.interpolate(self.cls(self.backbone(x)["f5"]), size=out_size, mode="bilinear",
                             align_corners=False)


def _prep(img: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype) -> torch.Tensor:
    x = img.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return ((x - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)


def _make_variants(backbone: str, size: tuple, device: torch.device, half: bool,
                   precision: str, dim: Optional[int] = None, heads: int = 4,
                   fold_bn: bool = True):
    """Build the model and the three timed closures (streamed, uncached, single frame).
    ``fold_bn``: fold BatchNorm into the convolutions, as the Segmenter does (the single-frame
    limit shares the backbone, so it is folded alike)."""
    w, h = size
    cfg = MSAFConfig(backbone=backbone, dim=dim or default_dim(backbone), heads=heads)
    model = MSAF(cfg).eval().to(device)
    if fold_bn:
        fold_batchnorm(model)
    dtype = torch.float16 if half else torch.float32
    model.to(dtype).to(memory_format=torch.channels_last)
    limit = SingleFrameLimit(model).eval().to(device).to(dtype).to(memory_format=torch.channels_last)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for _ in range(3)]

    def amp():
        return (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                and device.type == "cpu" else contextlib.nullcontext())

    def to_dev(img):
        return img.to(device, non_blocking=True)

    clock = StageClock(device)
    with torch.inference_mode(), amp():
        cache = [model.extract(_prep(to_dev(i), mean, std, dtype))["x"] for i in imgs[:2]]

    def streamed() -> object:
        model.stage_timer = clock
        with torch.inference_mode(), amp():
            with clock("preprocess"):
                x = _prep(to_dev(imgs[2]), mean, std, dtype)
            with clock("backbone"):
                cur = model.extract(x)
            logits = model.head(cache[0], cache[1], cur, (h, w))["out"]
            with clock("postprocess"):
                labels = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
        model.stage_timer = None
        return labels

    def uncached() -> object:
        with torch.inference_mode(), amp():
            xs = [_prep(to_dev(i), mean, std, dtype) for i in imgs]
            logits = model(torch.stack([x[0] for x in xs])[None])["out"]
            return logits[0].argmax(0).to(torch.uint8).cpu().numpy()

    def single() -> object:
        with torch.inference_mode(), amp():
            logits = limit(_prep(to_dev(imgs[2]), mean, std, dtype), (h, w))
            return logits[0].argmax(0).to(torch.uint8).cpu().numpy()

    variants: Dict[str, Callable[[], object]] = {"streamed": streamed, "uncached": uncached,
                                               "single_frame_limit": single}
    return variants, clock, dtype


#: a log line of the profiler's C++ side (kineto): "USDT:2026-12-02 05:39:59 9916:9916 X.cpp:39] ..."
_KINETO_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.]+:\d+\] ")


@contextlib.contextmanager
def quiet_profiler():
    """Keep the profiler's own log lines (profiler_start/stop, and on a CPU-only machine a
    failed GPU count reported as an ERROR) from the user: its C++ side writes them to the
    process's stderr, so that is captured while profiling, and every other line is passed
    on afterwards."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # read when the profiler first starts
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not _KINETO_LINE.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _torch_peak_mb(fn: Callable[[], object]) -> float:
    """Peak of the memory held by tensors allocated while ``fn`` runs (CPU), from the
    profiler's allocation/free events: activations and temporaries, not weights or inputs."""
    from torch.profiler import ProfilerActivity, profile
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")))
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2**20


def bench_model(backbone: str, size: tuple, device: torch.device, repeats: int, warmup: int,
                half: bool = False, precision: str = "fp32", dim: Optional[int] = None,
                heads: int = 4, fold_bn: bool = True) -> Dict[str, object]:
    w, h = size
    variants, clock, dtype = _make_variants(backbone, size, device, half, precision, dim, heads,
                                            fold_bn)
    times: Dict[str, List[float]] = {k: [] for k in variants}
    stage_runs: List[Dict[str, float]] = []
    mem: Dict[str, float] = {}
    for k, fn in variants.items():  # warm-up, and peak memory of each variant
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        for _ in range(warmup):
            fn()
        if device.type == "cuda":
            mem[k] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            mem[k] = _torch_peak_mb(fn)
    for _ in range(repeats):  # interleaved, so drifts of the machine hit all variants alike
        for k, fn in variants.items():
            clock.times = {}
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
            if k == "streamed":
                stage_runs.append(dict(clock.times))
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    stages = {s: statistics.median([r.get(s, 0.0) for r in stage_runs]) * 1000 for s in STAGES}
    return {
        "backbone": backbone, "size": f"{w}x{h}", "device": str(device), "dtype": str(dtype),
        "dim": dim or default_dim(backbone), "heads": heads, "fold_bn": fold_bn,
        "precision": precision, "ms": med, "stages_ms": stages, "peak_mem_mb": mem,
        "fps_streamed": 1000.0 / med["streamed"],
        "ratio_streamed_vs_uncached": med["streamed"] / med["uncached"],
        "ratio_streamed_vs_single_frame_limit": med["streamed"] / med["single_frame_limit"],
    }


class JointSpatioTemporalTransformer(nn.Module):
    """Vanilla transformer over the space-time volume: one MHSA over all 3·h·w tokens.

    ``frame_t_only``: carry only frame t's h·w queries (keys and values still span all three
    frames), the same economy the decoupled branch makes by consuming M^t alone.
    """

    def __init__(self, cfg: MSAFConfig) -> None:
        super().__init__()
        self.time_embed = nn.Parameter(torch.zeros(3, 1, cfg.dim))
        self.block = TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio)

    def forward(self, xs: List[torch.Tensor], frame_t_only: bool = False) -> torch.Tensor:
        b, d, h, w = xs[0].shape
        pos = sincos_pos_2d(h, w, d, xs[0].device, xs[0].dtype)
        tok = torch.cat([x.flatten(2).transpose(1, 2) + pos + self.time_embed[i]
                         for i, x in enumerate(xs)], dim=1)              # (B, 3hw, d)
        if frame_t_only:
            tok = self.block(tok, query=slice(2 * h * w, None))         # (B, hw, d)
        else:
            tok = self.block(tok)[:, 2 * h * w:]
        return tok.transpose(1, 2).reshape(b, d, h, w)                  # frame t


def bench_transformer(size: tuple, device: torch.device, repeats: int, warmup: int,
                      dim: int = 128, heads: int = 4) -> Dict[str, object]:
    w, h = size
    gh, gw = (h + 7) // 8, (w + 7) // 8
    cfg = MSAFConfig(dim=dim, heads=heads)
    model = MSAF(cfg).eval().to(device).to(memory_format=torch.channels_last)
    joint = JointSpatioTemporalTransformer(cfg).eval().to(device)
    g = torch.Generator().manual_seed(0)
    # channels_last, as the Segmenter's reduce(F5) hands them to the head
    xs = [torch.randn(1, dim, gh, gw, generator=g).to(device).contiguous(
        memory_format=torch.channels_last) for _ in range(3)]

    def decoupled():
        with torch.inference_mode():
            d_t = model.pst(xs[2], "t")
            d1 = model.pst(xs[1], "t-1")
            d2 = model.pst(xs[0], "t-2")
            return model.att(d2, d1, d_t)

    def vanilla():
        with torch.inference_mode():
            return joint(xs)

    def vanilla_t():
        with torch.inference_mode():
            return joint(xs, frame_t_only=True)

    res: Dict[str, Dict[str, float]] = {}
    fns = {"decoupled": decoupled, "joint": vanilla, "joint_t_queries": vanilla_t}
    for k, fn in fns.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            for _ in range(warmup):
                fn()
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            for _ in range(warmup):
                fn()
            peak = _torch_peak_mb(fn)
        res[k] = {"peak_mem_mb": peak, "runs": []}  # type: ignore[dict-item]
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            res[k]["runs"].append(time.perf_counter() - t0)  # type: ignore[union-attr]
    out: Dict[str, object] = {"grid": f"{gw}x{gh}", "tokens_per_frame": gh * gw, "dim": dim,
                              "device": str(device)}
    for k in fns:
        out[f"{k}_ms"] = statistics.median(res[k]["runs"]) * 1000  # type: ignore[arg-type]
        out[f"{k}_peak_mem_mb"] = res[k]["peak_mem_mb"]
    out["time_ratio_joint_over_decoupled"] = out["joint_ms"] / out["decoupled_ms"]  # type: ignore[operator]
    out["time_ratio_joint_t_queries_over_decoupled"] = (
        out["joint_t_queries_ms"] / out["decoupled_ms"])  # type: ignore[operator]
    n = gh * gw
    out["paper_cost_ratio_3n3_over_3n2_24n"] = (3 * n ** 3) / (3 * n ** 2 + 24 * n)
    return out


#: Kernel families of :func:`profile_frame`, by the operator that carries their time.
PROFILE_KINDS = ("attention", "conv", "matmul", "sampling", "other")


def _op_kind(name: str) -> Optional[str]:
    if name == "aten::scaled_dot_product_attention":
        return "attention"
    if name == "aten::conv2d":
        return "conv"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
        return "matmul"
    if name == "aten::grid_sampler":
        return "sampling"
    return None


def _attention_flops(shapes: List[List[int]]) -> int:
    """Multiply-adds ×2 of softmax(QKᵀ)V for q (…, Lq, D), k (…, Lk, D); exp not counted."""
    q, k = shapes[0], shapes[1]
    lead = 1
    for n in q[:-2]:
        lead *= n
    return 4 * lead * q[-2] * k[-2] * q[-1]


def _profile_once(fn: Callable[[], object]):
    """Run ``fn`` under the profiler: (stage → ms, stage → kind → {ms, gflop})."""
    from torch.profiler import ProfilerActivity, profile
    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                                   with_flops=True) as prof:
        fn()
    per: Dict[str, Dict[str, Dict[str, float]]] = {}
    totals: Dict[str, float] = {}
    for ev in prof.events():
        if ev.name.startswith("stage:"):
            totals[ev.name[6:]] = totals.get(ev.name[6:], 0.0) + ev.cpu_time_total / 1000
            continue
        kind = _op_kind(ev.name)
        if kind is None:
            continue
        stage, par, nested = None, ev.cpu_parent, False
        while par is not None:          # the enclosing stage; skip kernels inside a counted one
            if _op_kind(par.name) is not None:
                nested = True
            if par.name.startswith("stage:"):
                stage = par.name[6:]
                break
            par = par.cpu_parent
        if stage is None or nested:
            continue
        flops = _attention_flops(ev.input_shapes) if kind == "attention" else ev.flops
        cell = per.setdefault(stage, {}).setdefault(kind, {"ms": 0.0, "gflop": 0.0})
        cell["ms"] += ev.cpu_time_total / 1000
        cell["gflop"] += (flops or 0) / 1e9
    return totals, per


def profile_frame(backbone: str, size: tuple, device: torch.device, precision: str = "fp32",
                  dim: Optional[int] = None, heads: int = 4, warmup: int = 2, repeats: int = 5,
                  fold_bn: bool = True) -> Dict[str, object]:
    """A streamed frame under ``torch.profiler`` (CPU): per stage, the time of each kernel
    family (attention, convolution, matrix products, bilinear sampling, everything else)
    and the arithmetic rate (GFLOP/s) of the families whose work the profiler counts.
    Medians over ``repeats`` profiled frames, each cell on its own.

    Times include the profiler's own overhead (more for small operators), so they add up to
    more than the unprofiled frame (also reported); the shares and rates are what this is for."""
    if device.type != "cpu":
        raise ValueError("msaf-bench profile times CPU kernels; on CUDA use Nsight Systems")
    variants, _, _ = _make_variants(backbone, size, device, False, precision, dim, heads, fold_bn)
    streamed = variants["streamed"]
    for _ in range(warmup):
        streamed()
    plain = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        streamed()
        plain.append(time.perf_counter() - t0)
    runs = [_profile_once(streamed) for _ in range(max(1, repeats))]
    stages: Dict[str, Dict[str, object]] = {}
    for st in STAGES:
        if st not in runs[0][0]:
            continue
        total = statistics.median(r[0].get(st, 0.0) for r in runs)
        kinds = {k for r in runs for k in r[1].get(st, {})}
        cells: Dict[str, Dict[str, Optional[float]]] = {}
        for k in PROFILE_KINDS[:-1]:
            if k not in kinds:
                continue
            ms = statistics.median(r[1].get(st, {}).get(k, {}).get("ms", 0.0) for r in runs)
            gflop = max(r[1].get(st, {}).get(k, {}).get("gflop", 0.0) for r in runs)
            cells[k] = {"ms": ms, "gflop": gflop,
                        "gflop_per_s": gflop / (ms / 1000) if ms > 0 and gflop else None}
        known = sum(c["ms"] or 0.0 for c in cells.values())
        cells["other"] = {"ms": max(0.0, total - known), "gflop": 0.0, "gflop_per_s": None}
        stages[st] = {"ms": total, "kinds": cells}
    w, h = size
    return {"mode": "profile", "backbone": backbone, "size": f"{w}x{h}", "precision": precision,
            "dim": dim or default_dim(backbone), "heads": heads, "fold_bn": fold_bn,
            "repeats": repeats, "frame_ms_unprofiled": statistics.median(plain) * 1000,
            "frame_ms_profiled": sum(float(v["ms"]) for v in stages.values()),  # type: ignore[arg-type]
            "stages": stages}


def bench_dcn(size: tuple, repeats: int, warmup: int, dim: int = 128,
              groups: int = 8) -> Dict[str, object]:
    """torchvision's deform_conv2d against our grid_sample formulation, same inputs."""
    from torchvision.ops import deform_conv2d

    from ..model import modulated_deform_conv
    w, h = size
    gh, gw = (h + 7) // 8, (w + 7) // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, dim, gh, gw, generator=g, requires_grad=True)
    off = (2 * torch.randn(1, 2 * groups * 9, gh, gw, generator=g)).requires_grad_()
    mask = torch.rand(1, groups * 9, gh, gw, generator=g)
    wt = (0.05 * torch.randn(dim, dim, 3, 3, generator=g)).requires_grad_()
    b = torch.zeros(dim)
    fns = {"torchvision": lambda: deform_conv2d(x, off, wt, b, padding=1, mask=mask),
           "grid_sample": lambda: modulated_deform_conv(x, off, mask, wt, b, groups)}
    out: Dict[str, object] = {"grid": f"{gw}x{gh}", "channels": dim, "offset_groups": groups}
    for k, fn in fns.items():
        fwd, fb = [], []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            t1 = time.perf_counter()
            fn().square().sum().backward()
            t2 = time.perf_counter()
            if i >= warmup:
                fwd.append(t1 - t0)
                fb.append(t2 - t1)
        out[f"{k}_forward_ms"] = statistics.median(fwd) * 1000
        out[f"{k}_forward_backward_ms"] = statistics.median(fb) * 1000
    with torch.no_grad():
        out["max_abs_difference"] = float((fns["torchvision"]() - fns["grid_sample"]()).abs().max())
    return out


BACKEND_PRECISIONS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32",),
                      "openvino": ("fp32", "bf16", "int8")}


def _open_backend(backend: str, precision: str, checkpoint: Optional[str],
                  export: Optional[str], output_stride: Optional[int] = None):
    from ..segmenter import Segmenter
    path = checkpoint if backend == "torch" else (export or checkpoint)
    return Segmenter.from_checkpoint(path, "cpu", backend=backend, bf16=precision == "bf16",
                                     int8=precision == "int8", max_gap_s=None,
                                     output_stride=output_stride)


def bench_backends(backends: List[str], precisions: List[str], sizes: List[tuple],
                   repeats: int, warmup: int, checkpoint: Optional[str] = None,
                   export: Optional[str] = None, confidence: bool = False,
                   output_stride: Optional[int] = None) -> List[Dict[str, object]]:
    """The streamed frame on each (backend, precision) at each size, interleaved: medians
    in ms, and each one's speed-up over torch fp32 of the same run. A combination that
    cannot be opened (not installed, no int8 graphs) is reported with its reason.
    ``confidence``: each repeat also segments a frame with the confidence map (the next
    frame of the same stream, so the cache is as full), reported as ``confidence_ms`` and
    its median extra cost per frame, ``confidence_cost_ms`` (the difference of two noisy
    frame times), and the confidence map alone from the logits of that size,
    ``confidence_op_ms`` (:func:`~msaf_core.segmenter.winning_probability`, same threads)."""
    from ..backends import BackendError
    from ..export import ExportError, config_stride, read_record
    if output_stride is None and export:    # torch runs the network the engines run
        try:
            output_stride = config_stride(read_record(export))
        except ExportError:
            pass                            # reported below, per backend, by opening it
    combos, results = [], []
    for b in backends:
        for prec in precisions:
            if prec not in BACKEND_PRECISIONS.get(b, ()):
                continue
            try:
                combos.append((b, prec, _open_backend(b, prec, checkpoint, export,
                                                      output_stride)))
            except (BackendError, ExportError) as e:
                results.append({"backend": b, "precision": prec, "error": str(e)})
    g = torch.Generator().manual_seed(0)
    for w, h in sizes:
        imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
                for _ in range(3)]
        times: Dict[tuple, List[float]] = {(b, p): [] for b, p, _ in combos}
        conf_times: Dict[tuple, List[float]] = {(b, p): [] for b, p, _ in combos}
        for b, p, seg in combos:  # warm caches (and the engines' first-shape compilation)
            seg.reset()
            for i in range(2 + warmup):
                seg.segment(imgs[i % 3], "bench", stamp_ns=i * 10**8)
        for r in range(repeats):
            for b, p, seg in combos:
                stamp = (2 + warmup + 2 * r) * 10**8
                t0 = time.perf_counter()
                seg.segment(imgs[r % 3], "bench", stamp_ns=stamp)
                times[(b, p)].append(time.perf_counter() - t0)
                if confidence:
                    t0 = time.perf_counter()
                    seg.segment(imgs[(r + 1) % 3], "bench", stamp_ns=stamp + 10**8,
                                confidence=True)
                    conf_times[(b, p)].append(time.perf_counter() - t0)
        base = statistics.median(times[("torch", "fp32")]) if ("torch", "fp32") in times else None
        op_ms = _confidence_op_ms(combos[0][2].cfg.num_classes, h, w, repeats) \
            if confidence and combos else None
        strides = {(b, p): seg.cfg.output_stride for b, p, seg in combos}
        for (b, p), ts in times.items():
            ms = statistics.median(ts) * 1000
            row = {"backend": b, "precision": p, "size": f"{w}x{h}",
                   "output_stride": strides[(b, p)], "streamed_ms": ms,
                   "fps": 1000.0 / ms,
                   "speedup_vs_torch_fp32": None if base is None else base * 1000 / ms}
            if confidence:
                row["confidence_ms"] = statistics.median(conf_times[(b, p)]) * 1000
                row["confidence_cost_ms"] = statistics.median(
                    [c - t for c, t in zip(conf_times[(b, p)], ts)]) * 1000
                row["confidence_op_ms"] = op_ms
            results.append(row)
    return results


def _confidence_op_ms(num_classes: int, h: int, w: int, repeats: int) -> float:
    """Median ms of the confidence map alone: (K, H, W) float32 logits and their argmax →
    the uint8 map, as the Segmenter computes it after the upsampling."""
    from ..segmenter import winning_probability
    logits = torch.randn(num_classes, h, w, generator=torch.Generator().manual_seed(1))
    labels = logits.argmax(0)
    winning_probability(logits, labels)
    ts = []
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        winning_probability(logits, labels)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


def _engine_versions(backends: List[str]) -> Dict[str, str]:
    """The installed version of each engine asked for (for the record of a run)."""
    import importlib
    out = {}
    for b in backends:
        if b == "torch":
            continue
        try:
            out[b] = str(importlib.import_module(b).__version__)
        except ImportError:
            out[b] = "not installed"
    return out


def _print_backends(results: List[Dict[str, object]], meta: Dict[str, str]) -> None:
    engines = ", ".join(f"{k} {v}" for k, v in meta.get("engines", {}).items())
    print(f"streamed frame per backend, {meta['machine']}; torch {meta['torch']}"
          f"{', ' + engines if engines else ''}; medians, interleaved")
    conf = any("confidence_ms" in r for r in results)
    print(f"  {'backend':<12}{'precision':<10}{'size':>10}{'stride':>7}{'ms':>10}{'FPS':>8}"
          f"{'vs torch fp32':>15}"
          + (f"{'+confidence ms':>16}{'extra ms':>10}{'map ms':>10}" if conf else ""))
    for r in results:
        if "error" in r:
            print(f"  {r['backend']:<12}{r['precision']:<10}  not run: {r['error']}")
            continue
        sp = r["speedup_vs_torch_fp32"]
        extra = (f"{r['confidence_ms']:>16.1f}{r['confidence_cost_ms']:>10.1f}"
                 if "confidence_ms" in r else "")
        if "confidence_op_ms" in r:
            extra += f"{r['confidence_op_ms']:>10.1f}"
        print(f"  {r['backend']:<12}{r['precision']:<10}{r['size']:>10}{r['output_stride']:>7}"
              f"{r['streamed_ms']:>10.1f}"
              f"{r['fps']:>8.2f}{'' if sp is None else f'{sp:.2f}x':>15}{extra}")


def _size(s: str) -> tuple:
    try:
        w, h = s.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x512, got {s!r}") from None


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_description()}; {torch.get_num_threads()} threads"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = "model"
    if argv and argv[0] in ("transformer", "model", "dcn", "profile"):
        mode = argv.pop(0)
    p = argparse.ArgumentParser(prog="msaf-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_size, nargs="+", default=[(480, 360), (1024, 512)])
    p.add_argument("--size", type=_size, default=(1024, 512), help="transformer mode")
    p.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50", "resnet101"],
                   choices=["resnet18", "resnet50", "resnet101"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--half", action="store_true", help="float16 weights and activations (CUDA)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 autocast on CPU")
    p.add_argument("--dim", type=int, default=None,
                   help="head width d (default: 128 for resnet18, 256 otherwise, as shipped)")
    p.add_argument("--heads", type=int, default=4, help="attention heads of the head")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="keep BatchNorm layers separate (the Segmenter folds them by default)")
    p.add_argument("--backends", nargs="+", default=None, choices=list(BACKEND_PRECISIONS),
                   help="compare these backends on a real checkpoint (streamed frame)")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "int8"],
                   help="with --backends: the precisions to run where the backend has them")
    p.add_argument("--checkpoint", default=None,
                   help="with --backends: checkpoint (default: the bundled model)")
    p.add_argument("--export", default=None,
                   help="with --backends: an msaf-export folder for the engines")
    p.add_argument("--confidence", action="store_true",
                   help="with --backends: also time frames segmented with the confidence map")
    p.add_argument("--output-stride", type=int, choices=(8, 16), default=None,
                   help="with --backends: run the checkpoint at this backbone output stride "
                        "(an --export folder must have been exported at it; default: the "
                        "--export folder's, else the checkpoint's)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = {"date": date.today().isoformat(), "machine": _machine(device),
            "torch": torch.__version__, "command": "msaf-bench " + " ".join(sys.argv[1:] if argv is None else argv)}
    results: List[Dict[str, object]] = []
    if mode == "dcn":
        r = bench_dcn(args.size, args.repeats, args.warmup)
        results.append(r)
        print(f"deformable alignment at grid {r['grid']} ({r['channels']} channels, "
              f"{r['offset_groups']} offset groups), {meta['machine']}")
        for k in ("torchvision", "grid_sample"):
            print(f"  {k:<12} forward {r[f'{k}_forward_ms']:8.1f} ms   forward+backward "
                  f"{r[f'{k}_forward_backward_ms']:8.1f} ms")
        print(f"  max |difference| {r['max_abs_difference']:.2e}")
    elif mode == "profile":
        for size in args.sizes:
            for bb in args.backbones:
                r = profile_frame(bb, size, device, args.precision, args.dim, args.heads,
                                  args.warmup, args.repeats, args.fold_bn)
                results.append(r)
                print(f"\n{bb} @ {r['size']} ({r['precision']}, d={r['dim']}, {r['heads']} heads), "
                      f"{meta['machine']}: a streamed frame under torch.profiler (medians of "
                      f"{r['repeats']}), {r['frame_ms_profiled']:.0f} ms profiled ({r['frame_ms_unprofiled']:.0f} ms "
                      f"without); ms per kernel family (GFLOP/s)")
                print(f"  {'stage':<12}{'total':>8}" + "".join(f"{k:>18}" for k in PROFILE_KINDS))
                for st, row in r["stages"].items():  # type: ignore[union-attr]
                    cells = []
                    for k in PROFILE_KINDS:
                        c = row["kinds"].get(k)
                        if not c or c["ms"] < 0.05:
                            cells.append(f"{'-':>18}")
                            continue
                        rate = f" ({c['gflop_per_s']:.0f})" if c["gflop_per_s"] else ""
                        cells.append(f"{c['ms']:.1f}{rate}".rjust(18))
                    print(f"  {st:<12}{row['ms']:>8.1f}" + "".join(cells))
    elif args.backends:
        meta["engines"] = _engine_versions(args.backends)
        results = bench_backends(args.backends, args.precisions, args.sizes, args.repeats,
                                 args.warmup, args.checkpoint, args.export, args.confidence,
                                 args.output_stride)
        _print_backends(results, meta)
    elif mode == "transformer":
        r = bench_transformer(args.size, device, args.repeats, args.warmup,
                              dim=args.dim or default_dim("resnet18"), heads=args.heads)
        results.append(r)
        print(f"decoupled vs joint spatio-temporal transformer, grid {r['grid']} "
              f"({r['tokens_per_frame']} tokens/frame, d={r['dim']}), {meta['machine']}")
        print(f"  decoupled (PST+ATT): {r['decoupled_ms']:9.1f} ms  peak +{r['decoupled_peak_mem_mb']:.0f} MB")
        print(f"  joint (3hw tokens) : {r['joint_ms']:9.1f} ms  peak +{r['joint_peak_mem_mb']:.0f} MB")
        print(f"  joint, frame-t queries only: {r['joint_t_queries_ms']:9.1f} ms  peak "
              f"+{r['joint_t_queries_peak_mem_mb']:.0f} MB")
        print(f"  time ratio joint/decoupled: {r['time_ratio_joint_over_decoupled']:.1f}x "
              f"(target >= 5; paper's cost model 3n^3/(3n^2+24n): "
              f"{r['paper_cost_ratio_3n3_over_3n2_24n']:.0f}x); frame-t queries only: "
              f"{r['time_ratio_joint_t_queries_over_decoupled']:.1f}x")
    else:
        print(f"msaf-bench on {meta['machine']} ({args.device}); medians of {args.repeats} after "
              f"{args.warmup} warm-up; ms")
        hdr = "  ".join(f"{s[:10]:>10}" for s in STAGES)
        for size in args.sizes:
            for bb in args.backbones:
                r = bench_model(bb, size, device, args.repeats, args.warmup, args.half, args.precision,
                                args.dim, args.heads, args.fold_bn)
                results.append(r)
                ms, st = r["ms"], r["stages_ms"]
                print(f"\n{bb} @ {r['size']} ({r['dtype']}, {r['precision']}, d={r['dim']}, "
                      f"{r['heads']} heads{'' if r['fold_bn'] else ', BatchNorm not folded'})")
                print("  stages: " + hdr)
                print("          " + "  ".join(f"{st[s]:10.1f}" for s in STAGES))
                print(f"  streamed {ms['streamed']:.1f} ms ({r['fps_streamed']:.2f} FPS) | "
                      f"uncached {ms['uncached']:.1f} ms | single-frame limit "
                      f"{ms['single_frame_limit']:.1f} ms")
                print(f"  streamed/uncached {r['ratio_streamed_vs_uncached']:.2f} (target <= 0.45) | "
                      f"streamed/limit {r['ratio_streamed_vs_single_frame_limit']:.2f} (target <= 1.5)")
                print("  peak memory MB: " + ", ".join(f"{k} +{v:.0f}" for k, v in r["peak_mem_mb"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
