"""Self-describing checkpoints.

One file holds the weights, the model config, class names, palette, mean/std, channel
order, the training resolution and the metrics measured, and loads with
``torch.load(weights_only=True)``: only tensors and plain Python types are stored.
Training resume state (optimiser, schedule, RNG) may ride along under ``'train_state'``.
"""

from __future__ import annotations

import os
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


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load and validate the checkpoint dict (no model built). Raises a typed CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(path, "no such file; pass an existing checkpoint path "
                                            "(or none for the bundled default model)")
    if not path.is_file():
        raise CheckpointNotFoundError(path, "not a regular file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointCorruptError(path, f"cannot be read as a torch checkpoint, the file "
                                           f"is truncated or damaged ({msg})") from None
    except Exception as e:  # noqa: BLE001 - pickle errors of foreign files come in many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointFormatError(path, f"not an msaf checkpoint ({msg})") from None
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
                    map_location: Union[str, torch.device] = "cpu") -> Tuple[MSAF, Dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights.

    ``num_classes``, when given, must match the checkpoint's (a typed error otherwise).
    Returns ``(model in eval mode, checkpoint dict)``.
    """
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
    model.to(map_location).eval()
    return model, ckpt
