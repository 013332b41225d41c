"""Training MSAF: the recipe as a typed config, and the pieces of one training run.

:class:`TrainConfig` holds every option of a run (model, recipe, data, run control);
:func:`train` runs it, single process or one rank of a ``torchrun`` job. The program
``msaf-train`` (:mod:`msaf_core.tools.train`) is a command line over this module.

Presets fill every recipe option left unset:

- ``paper`` (the paper's §4.1 recipe, for ImageNet-initialised backbones): AdamW lr 6e-5,
  betas 0.9/0.999, weight decay 0.01, head lr ×10, 1500-iteration linear warm-up, poly
  decay (power 1.0), 80k iterations, batch 2 per GPU, crop 640 (CamVid) / 769
  (Cityscapes), random scale 0.5-2.0 and flip.
- ``scratch`` (no ImageNet weights): AdamW lr 1e-3 for all parameters, weight decay 0.01,
  500-iteration warm-up, poly power 0.9, batch 8, crop 256×256, scale 0.75-1.5, flip,
  mild per-frame colour jitter, class weights sqrt(median frequency), t-2 and t-1 backbone
  passes without gradient, bf16 autocast on CPUs that have it.
- ``robust`` (from scratch, for drives the model has never seen): as ``scratch`` with
  crop 192×192, scale 0.5-2.0, the light of each clip drawn anew (brightness, contrast,
  saturation ±0.3, gamma e^±0.4, white balance ±0.1, blur with probability 0.3) and
  varied per frame, sensor noise up to 0.03, OHEM cross-entropy (threshold 0.7, at least
  10% of the pixels) instead of class weights.

A run writes ``OUT/last.pt`` (resumable: optimiser, step, epoch, RNG), ``OUT/best.pt``
(best mIoU on the first validation set: the held-out drive where there is one; the mean
over the output strides where several are trained), both
self-describing checkpoints, and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from .checkpoint import read_checkpoint, save_checkpoint
from .config import MSAFConfig, VARIANTS, cityscapes_config, default_dim
from .data import ClipAugment, ClipDataset, build_dataset, median_frequency_weights
from .hardware import cpu_has_bf16
from .model import MSAF, msaf_loss

PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(lr=6e-5, head_lr_mult=10.0, weight_decay=0.01, warmup=1500, poly_power=1.0,
                  iters=80_000, batch_size=2, scale=(0.5, 2.0), jitter=0.0, class_weights="none",
                  history_grad=True, amp="auto"),
    "scratch": dict(lr=1e-3, head_lr_mult=1.0, weight_decay=0.01, warmup=500, poly_power=0.9,
                    iters=20_000, batch_size=8, crop=(256, 256), scale=(0.75, 1.5), jitter=0.2,
                    class_weights="sqrt-median", history_grad=False, amp="auto"),
    "robust": dict(lr=1e-3, head_lr_mult=1.0, weight_decay=0.01, warmup=300, poly_power=0.9,
                   iters=6000, batch_size=8, crop=(192, 192), scale=(0.5, 2.0), jitter=0.3,
                   gamma=0.4, colour=0.1, blur=0.3, noise=0.03, loss="ohem",
                   class_weights="none", history_grad=False, amp="auto"),
}
#: Values of the recipe options that a preset does not set.
COMMON: Dict[str, Any] = dict(gamma=0.0, colour=0.0, blur=0.0, noise=0.0, loss="ce",
                              ohem_thresh=0.7, ohem_min_kept=0.1)
DEFAULT_CROP = {"camvid": (640, 640), "cityscapes": (769, 769)}

#: Options that define the network: a resumed run must match them.
MODEL_KEYS = ("dataset", "backbone", "dim", "heads", "variant")
#: Options that define the schedule and the data order: a resumed run matches them unless
#: ``allow_changed_recipe``.
RECIPE_KEYS = ("batch_size", "iters", "lr", "head_lr_mult", "weight_decay", "warmup",
               "poly_power", "crop", "scale", "jitter", "class_weights", "history_grad", "seed",
               "gamma", "colour", "blur", "noise", "loss", "ohem_thresh", "ohem_min_kept",
               "train_split", "seqs", "holdout_seq", "output_strides")


@dataclass
class TrainConfig:
    """Every option of a training run. Recipe fields left ``None`` take the preset's value
    (:meth:`resolved`); invalid values raise ``ValueError``."""

    # where
    data_root: str                           # dataset folder
    out: str                                 # run folder: last.pt, best.pt, log.jsonl
    dataset: str = "camvid"                  # camvid | cityscapes
    # the model
    backbone: str = "resnet18"
    variant: str = "msaf"                    # a row of the paper's Table 3
    dim: Optional[int] = None                # head width d (None: 128 for resnet18, else 256)
    heads: int = 4                           # attention heads of every transformer block
    output_strides: List[int] = field(default_factory=lambda: [8])  # trained in turn, one per
    #                                          step; the first is the checkpoint's own
    # the recipe (None: from the preset)
    preset: str = "paper"
    iters: Optional[int] = None
    batch_size: Optional[int] = None         # per process
    crop: Optional[Tuple[int, int]] = None   # (H, W)
    scale: Optional[Tuple[float, float]] = None  # random resize range
    lr: Optional[float] = None
    head_lr_mult: Optional[float] = None     # learning-rate factor of everything but the backbone
    weight_decay: Optional[float] = None
    warmup: Optional[int] = None             # linear warm-up iterations
    poly_power: Optional[float] = None
    jitter: Optional[float] = None           # brightness/contrast/saturation range
    gamma: Optional[float] = None            # log-range of a gamma curve
    colour: Optional[float] = None           # per-channel gain range
    blur: Optional[float] = None             # probability of a Gaussian blur
    noise: Optional[float] = None            # largest sensor-noise standard deviation
    loss: Optional[str] = None               # ce | ohem
    ohem_thresh: Optional[float] = None      # OHEM: pixels below this true-class probability
    ohem_min_kept: Optional[float] = None    # OHEM: at least this fraction of the pixels
    class_weights: Optional[str] = None      # none | median | sqrt-median
    history_grad: Optional[bool] = None      # backprop through the t-2/t-1 backbone passes
    amp: Optional[str] = None                # auto | off | bf16 | fp16
    seed: int = 0
    # the data
    train_split: str = "train"               # split(s) to train on, joined with +
    seqs: Optional[List[str]] = None         # train on these sequences only
    holdout_seq: List[str] = field(default_factory=list)  # never trained on; validated on
    eval_split: str = "val"
    # the start
    init: Optional[str] = None               # start from this checkpoint's weights
    backbone_weights: Optional[str] = None   # a local torchvision ImageNet state dict
    resume: Optional[str] = None             # a last.pt, or 'auto' (OUT/last.pt if present)
    allow_changed_recipe: bool = False       # on resume, accept another recipe
    force: bool = False                      # start over in an OUT that holds a run
    # the machine and the run
    device: str = "auto"
    workers: int = 0
    threads: Optional[int] = None            # torch CPU threads per process
    eval_every: int = 1000
    save_every: int = 100
    log_every: int = 10
    stop_after: Optional[int] = None         # leave (saving last.pt) after this many iterations
    no_progress: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DEFAULT_CROP:
            raise ValueError(f"dataset must be one of {sorted(DEFAULT_CROP)}, got {self.dataset!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.loss not in (None, "ce", "ohem"):
            raise ValueError(f"loss must be ce or ohem, got {self.loss!r}")
        if (self.seqs or self.holdout_seq) and self.dataset != "camvid":
            raise ValueError("seqs/holdout_seq select CamVid drives")
        if (not self.output_strides or any(o not in (8, 16) for o in self.output_strides)
                or len(set(self.output_strides)) != len(self.output_strides)):
            raise ValueError(f"output_strides must be 8 and/or 16, each once, got "
                             f"{self.output_strides!r}")
        for name in ("iters", "batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")

    def resolved(self) -> "TrainConfig":
        """A copy with every recipe field filled from the preset (and the defaults)."""
        preset = {**COMMON, **PRESETS[self.preset]}
        changes = {k: v for k, v in preset.items() if getattr(self, k) is None}
        if self.crop is None:
            changes["crop"] = preset.get("crop", DEFAULT_CROP[self.dataset])
        if self.dim is None:
            changes["dim"] = default_dim(self.backbone)
        cfg = dataclasses.replace(self, **changes)
        cfg.crop, cfg.scale = tuple(cfg.crop), tuple(cfg.scale)  # type: ignore[arg-type]
        cfg.history_grad = bool(cfg.history_grad)
        return cfg

    def record(self) -> Dict[str, Any]:
        """The options as last.pt stores them (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    def model_config(self) -> MSAFConfig:
        kw = dict(backbone=self.backbone, dim=self.dim, heads=self.heads, variant=self.variant,
                  output_stride=self.output_strides[0])
        return cityscapes_config(**kw) if self.dataset == "cityscapes" else MSAFConfig(**kw)

    def augment(self) -> ClipAugment:
        return ClipAugment(crop=self.crop, scale=self.scale, flip=True, jitter=self.jitter,
                           gamma=self.gamma, colour=self.colour, blur=self.blur,
                           noise=self.noise)


def check_resume(saved: Dict[str, Any], cfg: TrainConfig, saved_world: Optional[int],
                 world: int, path: str) -> None:
    """Refuse to resume ``path`` under other model options (always) or another recipe or
    process count (unless ``allow_changed_recipe``, which prints what changed)."""
    now = cfg.record()

    def diffs(keys: Sequence[str]) -> List[str]:
        return [f"{k}: {saved[k]!r} in the run, {now[k]!r} now"
                for k in keys if k in saved and saved[k] != now[k]]
    model = diffs(MODEL_KEYS)
    if model:
        raise SystemExit(f"[msaf-train] {path} is a different model: " + "; ".join(model))
    recipe = diffs(RECIPE_KEYS)
    if saved_world is not None and saved_world != world:
        recipe.append(f"processes: {saved_world} in the run, {world} now")
    if recipe and not cfg.allow_changed_recipe:
        raise SystemExit(f"[msaf-train] {path} was trained with another recipe (" +
                         "; ".join(recipe) + "): resume with the same options, or pass "
                         "--allow-changed-recipe to continue under the new ones")
    if recipe and int(os.environ.get("RANK", "0")) == 0:
        print("[msaf-train] resuming with a changed recipe: " + "; ".join(recipe),
              file=sys.stderr)


def lr_factor(step: int, iters: int, warmup: int, power: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then poly decay to 0 at ``iters``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, iters - warmup))
    return (1.0 - frac) ** power


class EpochSampler(Sampler):
    """Seeded permutation per epoch, split across ranks, resumable from a position."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def batches_per_epoch(self, batch: int) -> int:
        return (self.n // self.world) // batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.n // self.world
        mine = perm[self.rank * per:(self.rank + 1) * per]
        return iter(mine[self.start:])

    def __len__(self) -> int:
        return self.n // self.world - self.start


def rng_state() -> Dict[str, Any]:
    """Every random generator a run draws from (torch, Python, NumPy, CUDA)."""
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_version": random.getstate()[0], "numpy": torch.from_numpy(
              np.random.get_state()[1].astype(np.int64)), "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), st["numpy_pos"], 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# -------------------------------------------------------------------------------------------
# The parts of a run
# -------------------------------------------------------------------------------------------
@dataclass
class Process:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_process(cfg: TrainConfig) -> Process:
    """Pick the device, join the ``torchrun`` group where there is one, set the threads."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if cfg.device == "auto" else cfg.device)
    rank, world = 0, int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank = int(os.environ["RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return Process(rank, world, device)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: ``auto`` is fp16 on CUDA, bf16 on CPUs that have it, else none."""
    amp = cfg.amp
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else ("bf16" if cpu_has_bf16() else "off")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)  # type: ignore[arg-type]


def build_data(cfg: TrainConfig, is_main: bool) -> Tuple[ClipDataset, List[Tuple[str, ClipDataset]]]:
    """The training set and the validation sets, the first of which chooses best.pt: the
    held-out drive where there is one, then ``eval_split``."""
    sel: Dict[str, Any] = {}
    if cfg.seqs or cfg.holdout_seq:
        sel = dict(sequences=cfg.seqs, exclude=tuple(cfg.holdout_seq))
    try:
        ds = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, cfg.augment(),
                           seed=cfg.seed, **sel)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"[msaf-train] {e}")
    val_sets: List[Tuple[str, ClipDataset]] = []
    if is_main and cfg.eval_every > 0:
        if cfg.holdout_seq:
            val_sets.append(("holdout:" + "+".join(cfg.holdout_seq), build_dataset(
                cfg.dataset, cfg.data_root, cfg.train_split, sequences=cfg.holdout_seq)))
        try:
            val_sets.append((cfg.eval_split,
                             build_dataset(cfg.dataset, cfg.data_root, cfg.eval_split)))
        except FileNotFoundError as e:
            print(f"[msaf-train] no validation on {cfg.eval_split}: {e}", file=sys.stderr)
    return ds, val_sets


def build_model(cfg: TrainConfig, device: torch.device, is_main: bool,
                resuming: bool = False) -> Tuple[MSAF, Optional[Dict[str, Any]]]:
    """The network, from ``init`` or ImageNet weights where asked (not when ``resuming``:
    last.pt holds the weights), and the record of its starting point (None when it starts
    from random weights)."""
    mcfg = cfg.model_config()
    model = MSAF(mcfg)
    init_record = None
    if cfg.init and not resuming:
        ck = read_checkpoint(cfg.init)
        c0 = ck.get("config") or {}
        keys = ("backbone", "dim", "heads", "variant", "num_classes")
        if any(c0.get(k) != getattr(mcfg, k) for k in keys):
            raise SystemExit(f"[msaf-train] --init {cfg.init} is another model "
                             f"({ {k: c0.get(k) for k in keys} })")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in ck["state_dict"].items()})
        init_record = {"path": str(cfg.init), "metrics": ck.get("metrics"),
                       "extra": ck.get("extra")}
        if is_main:
            print(f"[msaf-train] initialised from {cfg.init}")
    if cfg.backbone_weights:
        unused = model.backbone.load_imagenet(cfg.backbone_weights)
        if is_main:
            print(f"[msaf-train] ImageNet backbone from {cfg.backbone_weights} "
                  f"(unused: {len(unused)} classifier tensors)")
    model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model, init_record


def build_optimizer(cfg: TrainConfig, model: MSAF) -> torch.optim.Optimizer:
    """AdamW with two groups: the backbone, and the rest at ``head_lr_mult`` times the rate."""
    bb = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    return torch.optim.AdamW([{"params": bb, "lr_mult": 1.0},
                              {"params": head, "lr_mult": cfg.head_lr_mult}],
                             lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


@dataclass
class Criterion:
    """The loss of Eq. (15) as the recipe asks for it (class weights, OHEM)."""

    ignore_index: int
    class_weights: Optional[torch.Tensor] = None
    ohem: Optional[Tuple[float, float]] = None

    @classmethod
    def for_run(cls, cfg: TrainConfig, ds: ClipDataset, ignore_index: int,
                device: torch.device) -> "Criterion":
        cw = None
        if cfg.class_weights != "none":
            w = median_frequency_weights(ds.class_frequencies())
            cw = (w.sqrt() if cfg.class_weights == "sqrt-median" else w).to(device)
        ohem = (cfg.ohem_thresh, cfg.ohem_min_kept) if cfg.loss == "ohem" else None
        return cls(ignore_index, cw, ohem)  # type: ignore[arg-type]

    def __call__(self, outputs: Dict[str, torch.Tensor], label: torch.Tensor) -> Dict[str, torch.Tensor]:
        return msaf_loss(outputs, label, self.ignore_index, self.class_weights, self.ohem)


@dataclass
class TrainState:
    """Where a run stands: what last.pt stores besides the weights and the optimiser."""

    step: int = 0
    epoch: int = 0
    pos: int = 0                  # batches of the current epoch done
    best: float = -1.0            # best mIoU on the first validation set (mean over strides)
    init: Optional[Dict[str, Any]] = None  # the record of the starting checkpoint


def resume_run(path: str, cfg: TrainConfig, proc: Process, model: MSAF,
               opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> TrainState:
    """Load a last.pt into the model, optimiser, scaler and RNGs; return where it stood."""
    ck = read_checkpoint(path)
    ts = ck.get("train_state")
    if ts is None:
        raise SystemExit(f"{path}: holds no training state (use a last.pt)")
    check_resume(ts.get("args") or {}, cfg, ts.get("world"), proc.world, path)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in ck["state_dict"].items()})
    opt.load_state_dict(ts["optimizer"])
    if "scaler" in ts and scaler.is_enabled():
        scaler.load_state_dict(ts["scaler"])
    rng = ts.get("rng", {}).get(str(proc.rank))
    if rng is not None:
        set_rng_state(rng)
    if proc.is_main:
        print(f"[msaf-train] resumed {path} at step {ts['step']} (epoch {ts['epoch']}, "
              f"batch {ts['pos']})")
    best = ts.get("best", -1.0)
    # best.pt's score is the mean over the strides validated; a run saved before that rule,
    # or resumed with other strides, scored its best another way: best.pt starts over
    saved_strides = ts.get("best_strides") or (ts.get("args") or {}).get("output_strides", [8])[:1]
    if best >= 0 and list(saved_strides) != list(cfg.output_strides):
        if proc.is_main:
            print(f"[msaf-train] best.pt was chosen at output strides {list(saved_strides)}, "
                  f"this run validates at {list(cfg.output_strides)}: the next validation "
                  f"writes best.pt afresh")
        best = -1.0
    return TrainState(ts["step"], ts["epoch"], ts["pos"], best, ts.get("init"))


def save_last(out: Path, cfg: TrainConfig, proc: Process, model: MSAF,
              opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, st: TrainState) -> None:
    """Write OUT/last.pt: weights, optimiser, scaler, position and every rank's RNG state
    (a collective under ``torchrun``: every rank calls it)."""
    rngs: Dict[str, Any] = {str(proc.rank): rng_state()}
    if proc.distributed:
        gathered: List[Any] = [None] * proc.world
        dist.all_gather_object(gathered, rng_state())
        rngs = {str(i): g for i, g in enumerate(gathered)}
    if not proc.is_main:
        return
    ts = {"optimizer": opt.state_dict(), "step": st.step, "epoch": st.epoch, "pos": st.pos,
          "best": st.best, "best_strides": list(cfg.output_strides), "rng": rngs,
          "world": proc.world, "args": cfg.record()}
    if st.init is not None:
        ts["init"] = st.init
    if scaler.is_enabled():
        ts["scaler"] = scaler.state_dict()
    save_checkpoint(out / "last.pt", model, train_resolution=cfg.crop,
                    metrics={"best_val_miou": st.best, "step": st.step}, train_state=ts)


def train_step(model: torch.nn.Module, batch: Dict[str, torch.Tensor], criterion: Criterion,
               opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, lr: float,
               device: torch.device, amp: Optional[torch.dtype],
               history_grad: bool) -> Dict[str, float]:
    """One optimiser step on a batch of clips at learning rate ``lr``; returns the losses."""
    frames = batch["frames"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outputs = model(frames, history_grad=history_grad)
    losses = criterion(outputs, label)
    opt.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(opt)
    scaler.update()
    return {k: float(v.detach()) for k, v in losses.items()}


def validate_and_save(out: Path, cfg: TrainConfig, model: MSAF, device: torch.device,
                      val_sets: List[Tuple[str, ClipDataset]], st: TrainState,
                      log: "RunLog") -> Tuple[float, bool]:
    """Stream every validation set through a copy of the model (as the node would), at
    every output stride the run trains, log the figures, and write best.pt when the first
    set's mIoU is the best so far. Where several strides take turns, that mIoU is their
    mean: the checkpoint is meant to run at any of them. Returns that mIoU and whether it
    was a new best (``st.best`` is updated)."""
    from .evaluation import evaluate_stream
    from .segmenter import Segmenter
    strides = cfg.output_strides
    metrics: Dict[str, Any] = {"step": st.step}
    msgs, first = [], []
    for stride in strides:
        eval_model = MSAF(model.cfg)  # a copy: the Segmenter changes mode and layout
        eval_model.load_state_dict(model.state_dict())
        eval_model.set_output_stride(stride)
        seg = Segmenter(eval_model, "cpu" if device.type == "cpu" else device, max_gap_s=None)
        # the first stride's keys are those of a single-stride run; the others name theirs
        tag = "" if stride == strides[0] else f"_os{stride}"
        at = f" at stride {stride}" if len(strides) > 1 else ""
        for i, (name, vds) in enumerate(val_sets):
            res = evaluate_stream(seg, vds, tc=False)
            log.write({"step": st.step, "eval": name, "miou": float(res["miou"]),
                       "fps": res["fps"], "iou": res["iou"], "time": time.time(),
                       **({"output_stride": stride} if len(strides) > 1 else {})})
            metrics[f"{cfg.dataset}_{name}{tag}_miou"] = float(res["miou"])
            metrics[f"{cfg.dataset}_{name}{tag}_iou"] = res["iou"]
            msgs.append(f"{name}{at} mIoU {100 * float(res['miou']):.2f}")
            if i == 0:
                first.append(float(res["miou"]))
        del seg, eval_model  # one copy at a time (GPU memory)
    miou = sum(first) / len(first)
    msg = f"[msaf-train] step {st.step}: " + ", ".join(msgs)
    if len(strides) > 1:
        metrics[f"{cfg.dataset}_{val_sets[0][0]}_mean_over_strides_miou"] = miou
        msg += f"; {val_sets[0][0]} mean over strides {100 * miou:.2f}"
    new_best = miou > st.best
    if new_best:
        st.best = miou
        save_checkpoint(out / "best.pt", model, train_resolution=cfg.crop, metrics=metrics,
                        extra={"init": st.init} if st.init else None)
        msg += f" (best on {val_sets[0][0]})"
    log.say(msg)
    return miou, new_best


class RunLog:
    """OUT/log.jsonl (main process only) and the progress bar."""

    def __init__(self, out: Path, cfg: TrainConfig, is_main: bool, step: int) -> None:
        self.f = open(out / "log.jsonl", "a") if is_main else None
        self.bar = None
        if is_main and not cfg.no_progress:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=cfg.iters, initial=step, desc="train", unit="it",
                                dynamic_ncols=True)
            except ImportError:
                pass
        self.t_last, self.s_last = time.time(), step

    def write(self, rec: Dict[str, Any]) -> None:
        if self.f is not None:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def say(self, msg: str) -> None:
        (self.bar.write if self.bar is not None else print)(msg)

    def step(self, st: TrainState, lr: float, losses: Dict[str, float], every: int,
             last: bool, output_stride: Optional[int] = None) -> None:
        """Log the step just taken every ``every`` steps and at the last one; ``losses``
        are that step's, at ``output_stride`` when several strides take turns."""
        if self.f is None:
            return
        if self.bar is not None:
            self.bar.update(1)
        if st.step % every and not last:
            return
        now = time.time()
        ips = (st.step - self.s_last) / max(1e-9, now - self.t_last)
        self.t_last, self.s_last = now, st.step
        self.write({"step": st.step, "epoch": st.epoch, "lr": lr, "it_s": ips, "time": now,
                    **({"output_stride": output_stride} if output_stride else {}), **losses})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}", it_s=f"{ips:.2f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.f is not None:
            self.f.close()


def prepare_out(cfg: TrainConfig, is_main: bool) -> Path:
    """The run folder; refuses to start a new run over an old one without ``force``."""
    out = Path(cfg.out)
    if not cfg.resume and not cfg.force and any(
            (out / n).exists() for n in ("last.pt", "best.pt", "log.jsonl")):
        raise SystemExit(f"[msaf-train] {out} holds a run already: continue it with --resume "
                         f"auto, or start over with --force (or choose another --out)")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.force and not cfg.resume and (out / "log.jsonl").exists():
            (out / "log.jsonl").unlink()          # a new run: its record starts empty
    return out


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run (or resume) the training that ``cfg`` describes; returns the final step, the
    last losses and the best validation mIoU."""
    cfg = cfg.resolved()
    proc = setup_process(cfg)
    out = prepare_out(cfg, proc.is_main)
    amp = amp_dtype(cfg, proc.device)
    torch.manual_seed(cfg.seed + proc.rank)
    random.seed(cfg.seed + proc.rank)
    np.random.seed(cfg.seed + proc.rank)

    resume = cfg.resume
    if resume == "auto":
        resume = str(out / "last.pt") if (out / "last.pt").exists() else None
    ds, val_sets = build_data(cfg, proc.is_main)
    model, init_record = build_model(cfg, proc.device, proc.is_main, resuming=bool(resume))
    if ds.num_classes != model.cfg.num_classes:
        raise SystemExit(f"dataset has {ds.num_classes} classes, config {model.cfg.num_classes}")
    opt = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == torch.float16
                                                   and proc.device.type == "cuda"))
    criterion = Criterion.for_run(cfg, ds, model.cfg.ignore_index, proc.device)
    st = (resume_run(resume, cfg, proc, model, opt, scaler) if resume
          else TrainState(init=init_record))

    ddp_model: torch.nn.Module = model
    if proc.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    sampler = EpochSampler(len(ds), cfg.seed, proc.rank, proc.world)
    bpe = sampler.batches_per_epoch(cfg.batch_size)
    if bpe == 0:
        raise SystemExit(f"batch size {cfg.batch_size} x {proc.world} exceeds the {len(ds)} clips")
    stop = {"flag": False}

    def _on_signal(signum, frame):  # save and leave at the next step
        stop["flag"] = True
    for s in (signal.SIGTERM, signal.SIGINT):  # every rank: torchrun signals them all
        signal.signal(s, _on_signal)

    log = RunLog(out, cfg, proc.is_main, st.step)
    stop_at = None if cfg.stop_after is None else st.step + cfg.stop_after
    losses: Dict[str, float] = {}
    result: Dict[str, Any] = {}
    model.train()
    while st.step < cfg.iters and not stop["flag"]:
        sampler.epoch, sampler.start = st.epoch, st.pos * cfg.batch_size
        ds.set_epoch(st.epoch)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.workers, persistent_workers=False)
        for batch in loader:
            lr = cfg.lr * lr_factor(st.step, cfg.iters, cfg.warmup, cfg.poly_power)
            strides = cfg.output_strides
            # this step's stride where several take turns; checkpoints keep the first
            step_stride = strides[st.step % len(strides)] if len(strides) > 1 else None
            if step_stride:
                model.set_output_stride(step_stride)
            losses = train_step(ddp_model, batch, criterion, opt, scaler, lr, proc.device, amp,
                                cfg.history_grad)
            if step_stride:
                model.set_output_stride(strides[0])
            st.step += 1
            st.pos += 1
            if stop_at is not None and st.step >= stop_at:
                stop["flag"] = True
            if not math.isfinite(losses["loss"]):
                raise SystemExit(f"[msaf-train] loss is {losses['loss']} at step {st.step}")
            log.step(st, lr, losses, cfg.log_every, st.step == cfg.iters, step_stride)
            new_best = False
            if val_sets and (st.step % cfg.eval_every == 0 or st.step == cfg.iters):
                miou, new_best = validate_and_save(out, cfg, model, proc.device, val_sets, st, log)
                result = {"val_miou": miou}
            if proc.distributed:  # all ranks agree on stopping before save_last's collective
                flag = torch.tensor([int(stop["flag"]), int(new_best)], device=proc.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # (nccl: a tensor on the GPU)
                stop["flag"], new_best = bool(flag[0].item()), bool(flag[1].item())
            # after a new best.pt, last.pt records it at once: a crash before the next save
            # cannot resume with an older best and later overwrite best.pt with a worse model
            if (st.step % cfg.save_every == 0 or st.step == cfg.iters or stop["flag"]
                    or new_best):
                save_last(out, cfg, proc, model, opt, scaler, st)
            if st.step >= cfg.iters or stop["flag"]:
                break
        else:
            st.epoch, st.pos = st.epoch + 1, 0
            continue
        if st.pos >= bpe:
            st.epoch, st.pos = st.epoch + 1, 0
    log.close()
    if proc.distributed:
        dist.barrier()
        dist.destroy_process_group()
    result.update({"step": st.step, "losses": losses, "best": st.best})
    return result
