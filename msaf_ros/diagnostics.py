"""What segment_node reports about itself: the /diagnostics status and the log summary.

Pure functions of a :meth:`msaf_ros.runtime.Stats.snapshot`; the node wraps the result in a
``diagnostic_msgs/DiagnosticStatus``. :func:`values_of` reads a status back (the benchmarks
and the tests use it). Imports no rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .runtime import BAD_TEXT, RESET_TEXT

#: The status name, after the node's fully qualified name and ': '.
STATUS_NAME = "MSAF segmentation"


@dataclass(frozen=True)
class Status:
    level: str                  # 'OK', 'WARN' or 'ERROR' (DiagnosticStatus constant names)
    message: str
    values: Dict[str, str]      # key -> value, in a fixed order


def status(s: Dict[str, Any], input_topic: str, device: str) -> Status:
    """The status of one diagnostics period from the snapshot ``s``: ERROR when inference
    failed in the period, WARN when bad frames were dropped, OK otherwise.

    The frame counters add up: ``frames_received = frames_processed + frames_dropped_stale
    + frames_bad + inference_errors + frames_in_flight`` (in flight: waiting in a camera's
    slot or on the model). ``streams`` counts the cameras segmented within the last 10 s
    (at most ``max_streams``); ``streams_started`` every stream begun (again after it was
    dropped beyond ``max_streams``)."""
    if s["period_errors"]:
        level, message = "ERROR", f"inference errors: {s['last_error']}"
    elif s["period_bad"]:
        level, message = "WARN", f"bad frames dropped: {s['last_bad']}"
    elif s["received"] == 0:
        level, message = "OK", f"waiting for images on {input_topic}"
    else:
        level = "OK"
        message = f"{s['output_rate_hz']:.1f} Hz out, {s['proc_ms_mean']:.0f} ms per frame"
    values: Dict[str, Any] = {
        "input_topic": input_topic,
        "input_rate_hz": f"{s['input_rate_hz']:.2f}",
        "output_rate_hz": f"{s['output_rate_hz']:.2f}",
        "processing_ms_mean": f"{s['proc_ms_mean']:.1f}",
        "processing_ms_max": f"{s['proc_ms_max']:.1f}",
        "latency_ms_mean": f"{s['latency_ms_mean']:.1f}",
        "latency_ms_max": f"{s['latency_ms_max']:.1f}",
        "frames_received": s["received"],
        "frames_processed": s["processed"],
        "frames_dropped_stale": s["dropped_stale"],
        "frames_bad": s["bad"],
        "frames_in_flight": s["in_flight"],
        "cache_resets": s["resets"],
        "inference_errors": s["errors"],
        "streams": s["streams"],
        "streams_started": s["streams_started"],
        "published_labels": s["published"].get("labels", 0),
        "published_color_mask": s["published"].get("color_mask", 0),
        "published_overlay": s["published"].get("overlay", 0),
        "published_confidence": s["published"].get("confidence", 0),
        "device": device,
    }
    for reason in sorted(BAD_TEXT):
        values[f"bad_{reason}"] = s["bad_by_reason"].get(reason, 0)
    for reason in sorted(RESET_TEXT):
        values[f"resets_{reason}"] = s["resets_by_reason"].get(reason, 0)
    return Status(level, message, {k: str(v) for k, v in values.items()})


def summary_line(s: Dict[str, Any]) -> str:
    """The node's periodic one-line log summary of the snapshot ``s``."""
    bad = ", ".join(f"{k} {v}" for k, v in sorted(s["bad_by_reason"].items())) or "0"
    return (f"in {s['input_rate_hz']:.1f} Hz, out {s['output_rate_hz']:.1f} Hz, "
            f"{s['proc_ms_mean']:.0f} ms/frame, latency {s['latency_ms_mean']:.0f} ms; totals: "
            f"{s['processed']}/{s['received']} frames, {s['dropped_stale']} dropped stale, "
            f"bad {bad}, {s['resets']} cache resets, {s['errors']} errors, "
            f"{s['streams']} streams")


def values_of(arr: Any, name_part: str = "segment_node") -> Optional[Dict[str, Any]]:
    """The values of the first status of a DiagnosticArray whose name holds ``name_part``,
    plus ``_level`` and ``_message``; None when there is no such status."""
    for st in arr.status:
        if name_part in st.name:
            d: Dict[str, Any] = {kv.key: kv.value for kv in st.values}
            d["_level"] = st.level
            d["_message"] = st.message
            return d
    return None
