"""Self-describing checkpoints.

One file holds the weights, the model config, class names, palette, mean/std, channel
order, the training resolution and the metrics measured, and loads with
``torch.load(weights_only=True)``: only tensors and plain Python types are stored.
Training resume state (optimiser, schedule, RNG) may ride along under ``'train_state'``.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .config import MSAFConfig
from .errors import (CheckpointCorruptError, CheckpointFormatError, CheckpointMismatchError,
                     CheckpointNotFoundError)
from .model import MSAF

FORMAT = "msaf-checkpoint"
VERSION = 1
PathLike = Union[str, os.PathLike]


def default_checkpoint() -> Path:
    """Path of the model bundled with the package (installed with pip and colcon alike)."""
    return Path(__file__).resolve().parent / "weights" / "msaf_r18_camvid.pt"


def save_checkpoint(path: PathLike, model: MSAF, *, train_resolution: Optional[Tuple[int, int]] = None,
                    metrics: Optional[Dict[str, Any]] = None, half: bool = False,
                    train_state: Optional[Dict[str, Any]] = None,
                    extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file renamed into place).

    ``half=True`` stores floating-point weights as float16 (they load back as float32); a
    tensor with a value beyond float16's range (±65504, e.g. a large BatchNorm running
    variance) stays float32 rather than turn into inf.
    ``train_resolution`` is (height, width) of the training crops.
    """
    cfg = model.cfg
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        fp16_max = torch.finfo(torch.float16).max
        sd = {k: (v.half() if v.is_floating_point() and (v.numel() == 0 or bool(
            v.abs().max() <= fp16_max)) else v) for k, v in sd.items()}
    ckpt: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "class_names": list(cfg.class_names),
        "palette": [list(c) for c in cfg.palette],
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "channel_order": cfg.channel_order,
        "train_resolution": list(train_resolution) if train_resolution else None,
        "metrics": dict(metrics or {}),
        "state_dict": sd,
        "torch_version": str(torch.__version__),
    }
    if extra:
        ckpt["extra"] = extra
    if train_state is not None:
        ckpt["train_state"] = train_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


_WHAT_TO_DO = ("pass an msaf checkpoint (.pt) written by msaf-train or msaf-export, or none "
               "for the bundled model")
_UNSAFE = ("not an msaf checkpoint: it holds Python objects besides tensors and plain values "
           "(e.g. a whole pickled model, numpy arrays or custom classes), which msaf never "
           "loads because unpickling them can run code; " + _WHAT_TO_DO)

#: Leading bytes of files people pass by mistake -> what they are.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
          (b"GIF8", "a GIF image"), (b"II*\0", "a TIFF image"), (b"MM\0*", "a TIFF image"),
          (b"BM", "a BMP image"), (b"%PDF", "a PDF document"),
          (b"\x1f\x8b", "a gzip archive"), (b"\x89HDF", "an HDF5 file (Keras?)"),
          (b"\x93NUMPY", "a numpy .npy array"), (b"\x89MCAP", "an MCAP bag"),
          (b"SQLite format 3", "an SQLite database (a rosbag2 .db3?)"))


def _file_kind(path: Path) -> Optional[str]:
    """What a file is when it is plainly not a torch file (an image, text, ...), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None                      # torch.load reports it
    if not head:
        return None                      # empty: 'truncated or damaged'
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    return "a zip archive without a torch checkpoint in it"
        except (zipfile.BadZipFile, OSError):
            return None
        return None
    if head[:1] != b"\x80":              # not a pickle (torch's legacy format)
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError:
            pass
    return None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _refused_by_safe_loader(e: BaseException) -> bool:
    """torch's weights_only loader refused the file (its message advises turning the safe
    loader off, advice msaf never passes on)."""
    text = str(e)
    return "weights_only" in text or "Weights only load failed" in text or \
        "Unsupported global" in text


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load and validate the checkpoint dict (no model built). Raises a typed CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(path, "no such file; pass an existing checkpoint path "
                                            "(or none for the bundled default model)")
    if not path.is_file():
        raise CheckpointNotFoundError(path, "not a regular file")
    kind = _file_kind(path)
    if kind is not None:
        raise CheckpointFormatError(path, f"is {kind}, not a checkpoint; {_WHAT_TO_DO}")
    try:
        with warnings.catch_warnings():      # torch's pickle-protocol notes are not for users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        if _refused_by_safe_loader(e):
            raise CheckpointFormatError(path, _UNSAFE) from None
        raise CheckpointCorruptError(path, f"cannot be read as a torch checkpoint, the file "
                                           f"is truncated or damaged ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - pickle errors of foreign files come in many types
        if _refused_by_safe_loader(e):
            raise CheckpointFormatError(path, _UNSAFE) from None
        raise CheckpointFormatError(path, f"not an msaf checkpoint ({_first_line(e)}); "
                                          f"{_WHAT_TO_DO}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointFormatError(path, "not an msaf checkpoint (no 'format: "
                                          f"{FORMAT}' entry); train one with msaf-train")
    if ckpt.get("version") != VERSION:
        raise CheckpointFormatError(path, f"checkpoint version {ckpt.get('version')!r} is not "
                                          f"supported (this msaf_core reads version {VERSION})")
    for key in ("config", "state_dict"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointFormatError(path, f"missing or malformed '{key}' entry")
    return ckpt


def config_from_checkpoint(ckpt: Dict[str, Any], path: PathLike = "<checkpoint>") -> MSAFConfig:
    try:
        return MSAFConfig.from_dict(dict(ckpt["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(path, f"its config is invalid: {e}") from None


def load_checkpoint(path: PathLike, *, num_classes: Optional[int] = None,
                    map_location: Union[str, torch.device] = "cpu",
                    output_stride: Optional[int] = None) -> Tuple[MSAF, Dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights.

    ``num_classes``, when given, must match the checkpoint's (a typed error otherwise).
    ``output_stride`` (8 or 16) runs the weights at that backbone stride instead of the
    checkpoint's own (``train_options["output_strides"]`` says which ones they were trained
    at; another loses accuracy).
    Returns ``(model in eval mode, checkpoint dict)``.
    """
    if output_stride not in (None, 8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    ckpt = read_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    if num_classes is not None and num_classes != cfg.num_classes:
        raise CheckpointMismatchError(
            path, f"has {cfg.num_classes} classes but {num_classes} were asked for")
    model = MSAF(cfg)
    own = model.state_dict()
    sd = ckpt["state_dict"]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(
            path, f"weights do not fit its config ({len(missing)} missing, e.g. {missing[:2]}; "
                  f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}; {len(wrong)} of wrong "
                  f"shape, e.g. {wrong[:2]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    if output_stride is not None and output_stride != cfg.output_stride:
        model.set_output_stride(output_stride)
    model.to(map_location).eval()
    return model, ckpt
