"""The parameters of ``segment_node``: one table, checks, error messages, declaration.

Importing it imports neither rclpy nor torch, so launch files, tests and docs can read the
table (``PARAMETERS``) and the defaults (which ``config/msaf.yaml`` repeats) cheaply.
:func:`declare` declares the table on an rclpy node (descriptors with description, range and
read-only) and turns rclpy's type and range errors into :class:`ConfigError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from .errors import MsafRosError, first_line

NODE_NAME = "segment_node"
#: The node name config/msaf.yaml is keyed by: segment_node in any namespace.
PARAMS_FILE_KEY = f"/**/{NODE_NAME}"
#: The smallest frame side the network accepts (msaf_core's segmenter limit, MIN_SIZE; kept
#: here so that the subscription callback and the parameter checks need no torch import).
MIN_SIDE = 8


@dataclass(frozen=True)
class Param:
    name: str
    type: str                   # 'string' 'bool' 'int' 'double' 'string_array' 'int_array'
    default: Any
    description: str
    hint: str = ""              # how to fix a bad value
    range: Optional[Tuple[float, float]] = None   # inclusive, for int / double
    choices: Optional[Sequence[str]] = None
    read_only: bool = True      # changes need a restart (all of them do)
    output: bool = False        # set by the node (from the model), not by the user


PARAMETERS: Tuple[Param, ...] = (
    Param("checkpoint", "string", "",
          "Path of an msaf checkpoint (.pt); '' = the model bundled with msaf_core.",
          hint="set checkpoint:=/path/to/model.pt (an msaf checkpoint written by msaf-train) "
               "or '' for the bundled model"),
    Param("device", "string", "auto",
          "Inference device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.",
          hint="use device:=auto, cpu, cuda or cuda:N"),
    Param("half", "bool", False,
          "Run the model in float16 (CUDA devices only).",
          hint="set half:=false, or use a CUDA device"),
    Param("bf16", "bool", False,
          "Run the model under bfloat16 autocast (CPU only): several times faster on CPUs "
          "with AMX or AVX-512 BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later); "
          "labels may differ from float32 on a few pixels.",
          hint="set bf16:=false, or use device:=cpu (CUDA devices use half:=true)"),
    Param("backend", "string", "torch",
          "What runs the network: torch; onnxruntime or openvino (CPU engines running the "
          "exported graphs: a checkpoint is exported once into a cache, or checkpoint names an "
          "msaf-export folder); tensorrt (CUDA, engines built by msaf-export --format tensorrt).",
          hint="use backend:=torch, onnxruntime, openvino or tensorrt (docs/deploy.md)",
          choices=("torch", "onnxruntime", "openvino", "tensorrt")),
    Param("int8", "bool", False,
          "Run the int8 graphs of an export quantised by msaf-export --int8 (backend "
          "openvino; checkpoint names the export folder).",
          hint="set int8:=false, or backend:=openvino with checkpoint:=<an msaf-export "
               "--format openvino --int8 folder>"),
    Param("output_stride", "int", 0,
          "Backbone output stride: 0 = the checkpoint's own (8 for the bundled model); 16 "
          "runs the same weights about 3x cheaper at some accuracy (the bundled model is "
          "trained at 8 and 16; docs/model.md gives both figures).",
          hint="use output_stride:=0 (the checkpoint's), 8 or 16", range=(0, 16)),
    Param("threads", "int", 0,
          "CPU threads for torch (torch.set_num_threads); 0 = torch's default.",
          hint="use threads:=0 (torch default) or a small positive count", range=(0, 256)),
    Param("inference_height", "int", 0,
          "Height frames are resized to before the network; 0 = the input's own size. Labels "
          "always come back at the input resolution.",
          hint="use 0 (native) or >= 8, and set inference_width too", range=(0, 8192)),
    Param("inference_width", "int", 0,
          "Width frames are resized to before the network; 0 = the input's own size.",
          hint="use 0 (native) or >= 8, and set inference_height too", range=(0, 8192)),
    Param("overlay_alpha", "double", 0.5,
          "Weight of the colour mask in the overlay: (1-alpha)*frame + alpha*mask.",
          hint="use a value in 0.0..1.0, e.g. overlay_alpha:=0.5", range=(0.0, 1.0)),
    Param("max_gap", "double", 1.5,
          "Largest gap (seconds) between the stamps of frames arriving from a camera that "
          "keeps its feature cache; a longer gap resets the cache. Frames dropped as stale "
          "count as arrivals. 0 = no limit.",
          hint="use seconds >= 0, e.g. max_gap:=1.5", range=(0.0, 3600.0)),
    Param("max_pixels", "int", 8_388_608,
          "Frames with more pixels (width*height) are dropped with a warning; 0 = no limit. "
          "The default (8 MP) takes 4K UHD (3840x2160) and drops 4000x3000.",
          hint="use 0 (no limit) or a pixel count, e.g. max_pixels:=8388608",
          range=(0, 1 << 40)),
    Param("max_streams", "int", 16,
          "Cameras (frame_ids) whose feature caches are kept; the least recently seen is "
          "dropped beyond it.",
          hint="use a count >= 1", range=(1, 1024)),
    Param("input_transport", "string", "raw",
          "raw: sensor_msgs/Image on 'image'; compressed: sensor_msgs/CompressedImage on "
          "'<image>/compressed' (the image_transport convention).",
          hint="use input_transport:=raw or compressed", choices=("raw", "compressed")),
    Param("qos_reliability", "string", "best_effort",
          "Reliability of the input subscription: best_effort (the sensor-data profile; "
          "matches reliable and best-effort publishers) or reliable.",
          hint="use qos_reliability:=best_effort or reliable",
          choices=("best_effort", "reliable")),
    Param("diagnostics_period", "double", 1.0,
          "Seconds between diagnostic_msgs/DiagnosticArray messages on /diagnostics.",
          hint="use seconds in 0.05..3600, e.g. diagnostics_period:=1.0",
          range=(0.05, 3600.0)),
    Param("log_period", "double", 10.0,
          "Seconds between one-line summaries in the log; 0 = no summaries.",
          hint="use seconds >= 0, e.g. log_period:=10.0", range=(0.0, 86400.0)),
    Param("warn_period", "double", 5.0,
          "Bad-frame warnings of one kind are logged at most once per this many seconds.",
          hint="use seconds >= 0, e.g. warn_period:=5.0", range=(0.0, 86400.0)),
    # Set by the node from the loaded model (read-only; overrides are ignored).
    Param("class_names", "string_array", [],
          "Class names of the loaded model, index = class id in 'labels' (read-only).",
          output=True),
    Param("class_palette", "int_array", [],
          "RGB colour of each class in 'color_mask', flattened [r0, g0, b0, r1, ...] "
          "(read-only).", output=True),
)

BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMETERS}
#: The parameters a user sets (the keys of config/msaf.yaml).
USER_PARAMETERS = tuple(p.name for p in PARAMETERS if not p.output)
DEFAULTS: Dict[str, Any] = {p.name: p.default for p in PARAMETERS if not p.output}

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps|xpu|xpu:\d+)$")


class ConfigError(MsafRosError):
    """A bad parameter or model setting; the message is one line naming the parameter."""

    def __init__(self, param: str, problem: str, hint: str = "") -> None:
        # msaf_core messages may end with their own advice; ours (the hint) replaces it.
        problem = re.split(r";\s*(?:use|pass|train)\b", str(problem))[0].strip()
        self.param, self.problem = param, problem
        hint = hint or (BY_NAME[param].hint if param in BY_NAME else "")
        msg = f"parameter '{param}': {problem}"
        if hint:
            msg += f"; {hint}"
        super().__init__(" ".join(msg.split()))


def validate(values: Dict[str, Any]) -> Dict[str, Any]:
    """Check values beyond what the descriptors enforce; returns them normalised.

    Raises :class:`ConfigError` naming the first bad parameter."""
    v = dict(values)
    for p in PARAMETERS:
        if p.output or p.name not in v:
            continue
        x = v[p.name]
        if p.choices is not None:
            if not isinstance(x, str) or x.strip().lower() not in p.choices:
                raise ConfigError(p.name, f"{x!r} is not one of {', '.join(p.choices)}")
            v[p.name] = x.strip().lower()
        if p.range is not None and isinstance(x, (int, float)) and not isinstance(x, bool):
            lo, hi = p.range
            if not lo <= x <= hi:
                raise ConfigError(p.name, f"{x!r} is out of range [{lo}, {hi}]")
    dev = str(v.get("device", "auto")).strip().lower()
    if not _DEVICE_RE.match(dev):
        raise ConfigError("device", f"{v.get('device')!r} is not a device")
    v["device"] = dev
    h, w = int(v.get("inference_height", 0)), int(v.get("inference_width", 0))
    if (h == 0) != (w == 0):
        raise ConfigError("inference_height" if h == 0 else "inference_width",
                          f"inference size {h}x{w}: set both inference_height and "
                          f"inference_width, or both to 0",
                          hint="e.g. inference_height:=360 inference_width:=480")
    for name, s in (("inference_height", h), ("inference_width", w)):
        if 0 < s < MIN_SIDE:
            raise ConfigError(name, f"{s} is too small (the network needs >= {MIN_SIDE} "
                                    f"pixels)")
    if int(v.get("output_stride", 0)) not in (0, 8, 16):
        raise ConfigError("output_stride", f"{v['output_stride']!r} is not 0, 8 or 16")
    v["checkpoint"] = str(v.get("checkpoint", "")).strip()
    return v


def yaml_text() -> str:
    """config/msaf.yaml as this table says it should be (used by tests and docs)."""
    lines = [PARAMS_FILE_KEY + ":", "  ros__parameters:"]
    for p in PARAMETERS:
        if p.output:
            continue
        d = p.default
        val = ("true" if d else "false") if isinstance(d, bool) else \
            (f"'{d}'" if isinstance(d, str) else repr(d))
        lines.append(f"    {p.name}: {val}")
    return "\n".join(lines) + "\n"


# -- declaration on an rclpy node ---------------------------------------------------------------
_TYPE_NAMES = {"string": "a string", "bool": "a bool (true/false)", "int": "an integer",
               "double": "a double (write e.g. 1.0, not 1)", "string_array": "a string list",
               "int_array": "an integer list"}


def descriptor(p: Param) -> Any:
    """The rcl_interfaces ParameterDescriptor of ``p`` (type, description, range, read-only)."""
    from rcl_interfaces.msg import (FloatingPointRange, IntegerRange,  # noqa: PLC0415
                                    ParameterDescriptor, ParameterType)
    types = {"string": ParameterType.PARAMETER_STRING, "bool": ParameterType.PARAMETER_BOOL,
             "int": ParameterType.PARAMETER_INTEGER, "double": ParameterType.PARAMETER_DOUBLE,
             "string_array": ParameterType.PARAMETER_STRING_ARRAY,
             "int_array": ParameterType.PARAMETER_INTEGER_ARRAY}
    d = ParameterDescriptor(name=p.name, type=types[p.type], description=p.description,
                            read_only=p.read_only)
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    if p.range is not None and p.type == "int":
        d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]),
                                        step=1)]
    elif p.range is not None and p.type == "double":
        d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]),
                                                     to_value=float(p.range[1]), step=0.0)]
    return d


def _overrides(node: Any) -> Dict[str, Any]:
    return getattr(node, "_parameter_overrides", {}) or {}


def declare(node: Any) -> Dict[str, Any]:
    """Declare every user parameter on ``node`` once and return the values, checked by
    :func:`validate`. rclpy's type and range errors become :class:`ConfigError`."""
    from rclpy.exceptions import (InvalidParameterTypeException,  # noqa: PLC0415
                                  InvalidParameterValueException, ParameterException)
    values: Dict[str, Any] = {}
    for p in PARAMETERS:
        if p.output:
            continue
        given = getattr(_overrides(node).get(p.name), "value", None)
        try:
            node.declare_parameter(p.name, p.default, descriptor(p))
        except InvalidParameterTypeException:
            raise ConfigError(p.name, f"{given!r} is not {_TYPE_NAMES[p.type]}") from None
        except InvalidParameterValueException:
            lo, hi = p.range if p.range else (None, None)
            raise ConfigError(p.name, f"{given!r} is out of range [{lo}, {hi}]") from None
        except ParameterException as e:
            raise ConfigError(p.name, first_line(e, with_type=False)) from None
        values[p.name] = node.get_parameter(p.name).value
    return validate(values)


def declare_outputs(node: Any, class_names: Sequence[str], palette: Sequence[Sequence[int]]
                    ) -> None:
    """Declare the read-only parameters the node sets from its model (once: a managed node
    configured again after cleanup loads the same checkpoint)."""
    flat = [int(v) for c in palette for v in c]
    for name, value in (("class_names", list(class_names)), ("class_palette", flat)):
        if not node.has_parameter(name):
            node.declare_parameter(name, value, descriptor(BY_NAME[name]), ignore_override=True)


def unknown_overrides(node: Any) -> Tuple[str, ...]:
    """Parameters given to ``node`` that it does not declare (rclpy ignores them: a typo)."""
    return tuple(sorted(k for k in _overrides(node) if not node.has_parameter(k)))
