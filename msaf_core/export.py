"""The streaming model as two inference-engine graphs (ONNX, OpenVINO IR), and their record.

The :class:`~msaf_core.Segmenter` runs one backbone pass per frame and keeps reduce(F5) of
the two previous frames. The export follows that seam (``MSAF.extract`` / ``MSAF.head``):

- ``encoder``: ``frame`` (1, 3, H, W) normalised RGB → ``x`` (1, d, h, w), what the stream
  cache keeps, and, where the variant uses them, ``f3`` and ``f4`` (1, C, h, w) of frame t;
- ``head``: ``x_tm2``, ``x_tm1`` (cached), ``x``, ``f3``, ``f4`` → ``logits`` (1, h, w, K)
  on the 1/8 grid, class axis last. The caller upsamples them to the frame size and takes
  the argmax, as the torch path does (so the graphs do not depend on the output size).

H and W are dynamic in both graphs. Beside the graphs, ``msaf_export.json`` holds the
checkpoint's record (config, class names, palette, mean/std, channel order, training
resolution, metrics) and what each graph takes and gives, so an export folder stands alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, read_checkpoint
from .config import MSAFConfig
from .model import MSAF, fold_batchnorm

EXPORT_FORMAT = "msaf-export"
EXPORT_VERSION = 1
RECORD_NAME = "msaf_export.json"
OPSET = 18
FORMATS = ("onnx", "openvino")
#: checkpoint entries copied into the record
RECORD_KEYS = ("config", "class_names", "palette", "mean", "std", "channel_order",
               "train_resolution", "metrics", "extra")


class ExportError(RuntimeError):
    """An export that cannot be written or read; the message says what to do."""


def encoder_outputs(cfg: MSAFConfig) -> List[str]:
    model_has_stages = cfg.uses_state or cfg.variant == "without_state"
    return ["x", "f3", "f4"] if model_has_stages else ["x"]


def head_inputs(cfg: MSAFConfig) -> List[str]:
    hist = ["x_tm2", "x_tm1"] if cfg.temporal else []
    return hist + encoder_outputs(cfg)


class EncoderGraph(nn.Module):
    """frame → the encoder outputs of :func:`encoder_outputs`, in that order."""

    def __init__(self, model: MSAF) -> None:
        super().__init__()
        self.model = model
        self.names = encoder_outputs(model.cfg)

    def forward(self, frame: Tensor) -> Tuple[Tensor, ...]:
        out = self.model.extract(frame)
        return tuple(out[k] for k in self.names)


class HeadGraph(nn.Module):
    """The inputs of :func:`head_inputs` → logits (1, h, w, K) on the 1/8 grid."""

    def __init__(self, model: MSAF) -> None:
        super().__init__()
        self.model = model
        self.names = head_inputs(model.cfg)

    def forward(self, *feats: Tensor) -> Tensor:
        named = dict(zip(self.names, feats))
        cur = {k: named[k] for k in encoder_outputs(self.model.cfg)}
        logits = self.model.head(named.get("x_tm2"), named.get("x_tm1"), cur, None)["out"]
        return logits.permute(0, 2, 3, 1)


def checkpoint_record(ckpt: Dict[str, Any], path: Union[str, Path]) -> Dict[str, Any]:
    rec = {k: ckpt.get(k) for k in RECORD_KEYS if k in ckpt}
    rec["source_checkpoint"] = str(path)
    rec["source_sha256"] = file_sha256(path)
    return rec


def file_sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _onnx_export(module: nn.Module, args: Tuple[Tensor, ...], names: Sequence[str],
                 outputs: Sequence[str], dynamic: Any, path: Path) -> None:
    """One graph through torch's ONNX exporter, with the dims in ``dynamic`` (the
    ``dynamic_shapes`` of ``torch.export``) left free."""
    for dep in ("onnx", "onnxscript"):
        try:
            __import__(dep)
        except ImportError as e:
            raise ExportError(f"the ONNX export needs {dep} ({e}); pip install .[onnxruntime] "
                              f"or .[openvino]") from None
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, input_names=list(names),
                                 output_names=list(outputs), opset_version=OPSET,
                                 dynamic_shapes=dynamic,
                                 external_data=False, verbose=False)
        prog.save(str(path), external_data=False)


def export_onnx(model: MSAF, out_dir: Union[str, Path],
                example_size: Tuple[int, int] = (96, 128)) -> Dict[str, Any]:
    """Write ``encoder.onnx`` and ``head.onnx`` of ``model`` (BatchNorm folded, eval mode,
    float32) into ``out_dir``; returns the graph part of the record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    fold_batchnorm(model)
    cfg = model.cfg
    H, W = torch.export.Dim("H", min=16), torch.export.Dim("W", min=16)
    h, w = torch.export.Dim("h", min=2), torch.export.Dim("w", min=2)
    # the same example grid at either stride (the head's shape guards come from its sizes)
    example_size = tuple(s * cfg.output_stride // 8 for s in example_size)
    frame = torch.randn(1, 3, *example_size, generator=torch.Generator().manual_seed(0))
    enc, head = EncoderGraph(model).eval(), HeadGraph(model).eval()
    with torch.no_grad():
        feats = dict(zip(enc.names, enc(frame)))
    feats["x_tm2"] = feats["x"] * 0.5
    feats["x_tm1"] = feats["x"] * 0.75
    _onnx_export(enc, (frame,), ["frame"], enc.names, ({2: H, 3: W},),
                 out_dir / "encoder.onnx")
    grid = (tuple({2: h, 3: w} for _ in head.names),)  # the one *feats argument
    _onnx_export(head, tuple(feats[n] for n in head.names), head.names, ["logits"], grid,
                 out_dir / "head.onnx")
    return {"encoder": {"file": "encoder.onnx", "inputs": ["frame"], "outputs": enc.names},
            "head": {"file": "head.onnx", "inputs": head.names, "outputs": ["logits"]},
            "opset": OPSET}


def write_record(out_dir: Path, record: Dict[str, Any]) -> None:
    (out_dir / RECORD_NAME).write_text(json.dumps(record, indent=2))


def config_stride(record: Dict[str, Any]) -> int:
    """The output stride a checkpoint or an export record was made at (8 where it predates
    the option)."""
    return (record.get("config") or {}).get("output_stride", 8)


def read_record(export_dir: Union[str, Path]) -> Dict[str, Any]:
    """The record of an export folder; :class:`ExportError` if it is not one."""
    path = Path(export_dir) / RECORD_NAME
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{export_dir}: not an msaf export folder (cannot read {RECORD_NAME}: "
                          f"{e}); write one with msaf-export --format onnx CKPT OUT") from None
    if rec.get("format") != EXPORT_FORMAT or rec.get("version") != EXPORT_VERSION:
        raise ExportError(f"{export_dir}: {RECORD_NAME} is not an msaf export record of "
                          f"version {EXPORT_VERSION}; export the checkpoint again")
    return rec


def export_checkpoint(checkpoint: Union[str, Path], out_dir: Union[str, Path],
                      fmt: str = "onnx", output_stride: Optional[int] = None) -> Dict[str, Any]:
    """Export a checkpoint's model as the encoder/head pair in ``fmt`` (``onnx``: .onnx
    files; ``openvino``: OpenVINO IR .xml/.bin, float32 weights) with the record beside.
    ``output_stride`` bakes that backbone stride into the graphs instead of the
    checkpoint's own (the record's ``config`` says which).
    The folder is written under a temporary name and renamed when complete."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    model, ckpt = load_checkpoint(checkpoint, output_stride=output_stride)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        graphs = export_onnx(model, tmp)
        if fmt == "openvino":
            graphs = onnx_to_openvino(tmp, graphs)
        record = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "graph_format": fmt,
                  "graphs": graphs, "torch_version": str(torch.__version__),
                  **checkpoint_record(ckpt, checkpoint)}
        record["config"] = model.cfg.to_dict()  # with the stride the graphs were made at
        write_record(tmp, record)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a temporary folder is private; the export is not
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def onnx_to_openvino(folder: Path, graphs: Dict[str, Any]) -> Dict[str, Any]:
    """Convert the ONNX pair in ``folder`` to OpenVINO IR (float32 weights) beside it. The
    IR becomes the pair; the ONNX files stay, as ``encoder_onnx``/``head_onnx``, for
    engines that read ONNX only."""
    ov = import_openvino()
    out = dict(graphs)
    for part in ("encoder", "head"):
        src = folder / graphs[part]["file"]
        xml = src.with_suffix(".xml")
        ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)
        out[part] = dict(graphs[part], file=xml.name)
        out[f"{part}_onnx"] = dict(graphs[part])
    return out


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ExportError(f"OpenVINO is not installed ({e}); pip install .[openvino]") from None
    return ov


def cache_dir() -> Path:
    """Where exports made on the fly for a backend are kept: ``$MSAF_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/msaf`` (``~/.cache/msaf``)."""
    env = os.environ.get("MSAF_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "msaf"


def cache_key(checkpoint: Union[str, Path], output_stride: Optional[int] = None) -> str:
    """The name of a checkpoint's folder in the export cache."""
    key = f"{file_sha256(checkpoint)}:{EXPORT_VERSION}:{torch.__version__}"
    if output_stride is not None:
        key += f":os{output_stride}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def cached_export(checkpoint: Union[str, Path], cache: Union[str, Path, None] = None,
                  output_stride: Optional[int] = None) -> Path:
    """The ONNX export of ``checkpoint`` (at ``output_stride``, else the checkpoint's own),
    made once and kept under ``cache`` (default :func:`cache_dir`), keyed by the file's
    SHA-256, this export version, torch's and the stride."""
    ckpt = read_checkpoint(checkpoint)  # a typed CheckpointError for a bad file, before any work
    if output_stride == config_stride(ckpt):
        output_stride = None  # the checkpoint's own: the same folder as without
    folder = Path(cache or cache_dir()) / "exports" / cache_key(checkpoint, output_stride)
    if (folder / RECORD_NAME).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    export_checkpoint(checkpoint, folder, "onnx", output_stride)
    return folder


def calibration_clips(data_root: Union[str, Path], count: int, dataset: str = "camvid",
                      split: str = "train", exclude: Sequence[str] = ()) -> List[List[Any]]:
    """``count`` training clips (three consecutive H×W×3 uint8 frames each), evenly spread
    over the split, for int8 calibration."""
    from .data import build_dataset
    sel = {"exclude": tuple(exclude)} if exclude else {}
    ds = build_dataset(dataset, data_root, split, cache=False, **sel)
    if len(ds) == 0:
        raise ExportError(f"no {split} clips under {data_root} to calibrate on")
    step = max(1, len(ds) // max(1, count))
    return [ds.raw(i)[0] for i in range(0, len(ds), step)[:count]]


def quantize_openvino(export_dir: Union[str, Path], clips: Sequence[Sequence[Any]],
                      threads: int = 0) -> Dict[str, Any]:
    """Post-training int8 quantisation of an export's encoder and head with NNCF, calibrated
    on ``clips`` (frames t-2, t-1, t): the encoder on frame t, the head on the float32
    encoder's features of the three frames. Writes ``encoder_int8.xml``/``head_int8.xml``
    (OpenVINO IR) and adds them to the record."""
    # NNCF imports torch's C++ extension helper, which logs a warning about CUDA_HOME on
    # machines without CUDA; nothing here builds an extension
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError as e:
        raise ExportError(f"NNCF is not installed ({e}); pip install .[int8]") from None
    ov = import_openvino()
    folder = Path(export_dir)
    rec = read_record(folder)
    graphs = rec["graphs"]
    mean = np.asarray(rec["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(rec["std"], np.float32).reshape(1, 3, 1, 1)
    core = ov.Core()
    conf = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads}
                                                   if threads else {})}
    enc_model = core.read_model(str(folder / graphs["encoder"]["file"]))
    enc = core.compile_model(enc_model, "CPU", conf)
    head_names = list(graphs["head"]["inputs"])
    frames_t, head_feeds = [], []
    for clip in clips:
        xs = [(np.asarray(f, np.float32).transpose(2, 0, 1)[None] / 255.0 - mean) / std
              for f in clip]
        feats = [enc(x.astype(np.float32)) for x in xs]
        named = {k: feats[2][enc.output(k)] for k in graphs["encoder"]["outputs"]}
        named.update(x_tm2=feats[0][enc.output("x")], x_tm1=feats[1][enc.output("x")])
        frames_t.append(xs[2].astype(np.float32))
        head_feeds.append({k: named[k] for k in head_names})
    q_enc = nncf.quantize(enc_model, nncf.Dataset(frames_t), subset_size=len(frames_t))
    head_model = core.read_model(str(folder / graphs["head"]["file"]))
    q_head = nncf.quantize(head_model, nncf.Dataset(head_feeds), subset_size=len(head_feeds),
                           model_type=nncf.ModelType.TRANSFORMER)
    for part, q in (("encoder", q_enc), ("head", q_head)):
        name = f"{part}_int8.xml"
        ov.save_model(q, str(folder / name), compress_to_fp16=False)
        graphs[f"{part}_int8"] = dict(graphs[part], file=name)
    rec["int8_calibration"] = {"clips": len(clips), "tool": f"nncf {nncf.__version__}"}
    write_record(folder, rec)
    return rec
