"""Loading the MSAF model for msaf_ros: for the node (from its parameters) and for the
offline tools (from ``--checkpoint``/``--device``), each failure one line that says what to
fix; and what the node says about the model it loaded.

Imports torch and msaf_core only when a model is loaded.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from .errors import MsafRosError, first_line
from .params import ConfigError


def load_node_model(cfg: Dict[str, Any]) -> Any:
    """The Segmenter that segment_node's validated parameters ``cfg`` ask for.

    Every failure is a :class:`ConfigError` naming the parameter to fix."""
    import torch  # noqa: PLC0415

    from msaf_core import CheckpointError, Segmenter, default_checkpoint  # noqa: PLC0415
    from msaf_core.segmenter import resolve_device  # noqa: PLC0415

    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    try:
        device = resolve_device(cfg["device"])
    except ValueError as e:
        raise ConfigError("device", str(e)) from None
    if cfg["half"] and device.type != "cuda":
        raise ConfigError("half", f"half precision needs a CUDA device, but device "
                                  f"'{cfg['device']}' is {device}")
    if cfg["bf16"] and device.type != "cpu":
        raise ConfigError("bf16", f"bf16 autocast is for the CPU, but device "
                                  f"'{cfg['device']}' is {device}; use half:=true on CUDA")
    path = os.path.expanduser(cfg["checkpoint"]) if cfg["checkpoint"] else None
    if path is None and not default_checkpoint().is_file():
        raise ConfigError("checkpoint", f"checkpoint is '' (the bundled model) but "
                                        f"{default_checkpoint()} is not installed")
    from msaf_core.backends import BackendError  # noqa: PLC0415
    from msaf_core.export import ExportError  # noqa: PLC0415
    backend = cfg.get("backend", "torch")
    try:
        return Segmenter.from_checkpoint(path, device=device, size=inference_size(cfg),
                                         half=cfg["half"], bf16=cfg["bf16"],
                                         max_gap_s=cfg["max_gap"] or None,
                                         max_streams=cfg["max_streams"], backend=backend,
                                         int8=cfg.get("int8", False),
                                         output_stride=cfg.get("output_stride") or None)
    except (CheckpointError, ExportError) as e:
        raise ConfigError("checkpoint", str(e)) from None
    except BackendError as e:
        raise ConfigError("int8" if cfg.get("int8") and "int8" in str(e) else
                          "output_stride" if "output stride" in str(e) else "backend",
                          str(e)) from None
    except ValueError as e:
        raise ConfigError("half" if "half" in str(e) else "device", str(e)) from None
    except (RuntimeError, MemoryError) as e:
        raise ConfigError("device", f"cannot put the model on {device}: "
                                    f"{first_line(e, with_type=False)}",
                          hint="use device:=cpu or free device memory") from None


def load_model(checkpoint: Optional[str] = None, device: str = "auto",
               backend: str = "torch", output_stride: Optional[int] = None) -> Any:
    """The Segmenter of ``checkpoint`` (None: the bundled model; an msaf-export folder for an
    engine) on ``device`` and ``backend`` (at ``output_stride``, else the checkpoint's), for
    the offline tools. An unusable checkpoint, device or backend is a one-line
    :class:`MsafRosError`."""
    from msaf_core import CheckpointError, Segmenter, default_checkpoint  # noqa: PLC0415
    from msaf_core.export import ExportError  # noqa: PLC0415
    try:
        return Segmenter.from_checkpoint(checkpoint, device=device, backend=backend,
                                         output_stride=output_stride)
    except ExportError as e:
        raise MsafRosError(str(e)) from None
    except CheckpointError as e:
        if checkpoint is None and not default_checkpoint().exists():
            raise MsafRosError(f"the default model {default_checkpoint()} is not installed "
                               f"(train it with msaf-train, or get a release that bundles "
                               f"it); pass --checkpoint PATH") from None
        raise MsafRosError(str(e)) from None
    except ValueError as e:        # an unusable device, a backend not installed
        raise MsafRosError(str(e)) from None


def inference_size(cfg: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """(height, width) frames are resized to, or None for the input's own size."""
    if cfg["inference_height"] and cfg["inference_width"]:
        return cfg["inference_height"], cfg["inference_width"]
    return None


def describe(seg: Any, cfg: Dict[str, Any]) -> str:
    """The node's log line about its model (the node benchmarks read it back)."""
    import torch  # noqa: PLC0415
    ck, size = seg.checkpoint or {}, inference_size(cfg)
    return (f"model {ck.get('path')} ({seg.cfg.backbone}, {seg.cfg.num_classes} classes, "
            f"trained at {ck.get('train_resolution')}) on {seg.device}"
            f"{' fp16' if cfg['half'] and seg.engine is None else ''}"
            f"{' bf16' if cfg['bf16'] and seg.engine is None else ''}"
            f"{'' if seg.engine is None else ' with ' + seg.engine.describe()}, output stride "
            f"{seg.cfg.output_stride}, inference size "
            f"{'native' if size is None else f'{size[0]}x{size[1]}'}, torch threads "
            f"{torch.get_num_threads()}")


def class_info(seg: Any) -> Dict[str, Any]:
    """The content of the node's latched ``class_info`` topic (JSON)."""
    ck = seg.checkpoint or {}
    return {"class_names": list(seg.class_names), "palette": seg.palette.tolist(),
            "num_classes": int(seg.cfg.num_classes), "ignore_index": int(seg.cfg.ignore_index),
            "labels_encoding": "mono8", "checkpoint": ck.get("path"),
            "backbone": seg.cfg.backbone, "variant": seg.cfg.variant,
            "train_resolution": ck.get("train_resolution"), "metrics": ck.get("metrics") or {}}
