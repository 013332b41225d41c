"""What the node benchmarks recorded, and the figures they report from it.

:class:`Recording` holds every frame sent, every output received, the node's /diagnostics
and its memory and CPU samples; its methods compute the figures (latency, correspondence,
the node's own counters over a window). The harness fills it while it runs; the analysis
needs no ROS. Also the shared helpers of the reports: percentiles, trends, the environment,
JSON.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

LABELS = "/labels"
CONFIDENCE = "/confidence"
#: the outputs that are mono8 images (the rest are rgb8)
MONO8_OUTPUTS = (LABELS, CONFIDENCE)

#: An output received: (stamp, frame_id, arrival ns, rmw receive ns, width, height, encoding).
Output = Tuple[int, str, int, int, int, int, str]
#: A sample of the node process: (monotonic s, wall ns, RSS kB, peak RSS kB, CPU seconds).
Sample = Tuple[float, int, int, Optional[int], Optional[float]]


@dataclass
class Recording:
    frame_id: str
    frame_size: Tuple[int, int]                      # (width, height) of the frames sent
    outputs: Sequence[str] = (LABELS,)
    sent: Dict[int, Tuple[int, str, int]] = field(default_factory=dict)
    #: stamp -> (frame index, tag, send ns)
    order: List[int] = field(default_factory=list)   # stamps in send order
    got: Dict[str, List[Output]] = field(default_factory=dict)
    diags: List[Dict[str, Any]] = field(default_factory=list)
    samples: List[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        for t in self.outputs:
            self.got.setdefault(t, [])

    def stamps(self, tag: str) -> List[int]:
        """Stamps of the frames published under ``tag``, in send order."""
        return [st for st in self.order if self.sent[st][1] == tag]

    def outputs_of(self, topic: str, stamps: Iterable[int]) -> List[Output]:
        want = set(stamps)
        return [r for r in self.got[topic] if r[0] in want]

    @staticmethod
    def latencies_ms(recs: Sequence[Output]) -> Tuple[List[float], List[float]]:
        """(callback arrival - stamp, rmw receive time - stamp) in ms, first output only."""
        seen, cb, rmw = set(), [], []
        for st, _fid, t, r, *_ in recs:
            if st in seen:
                continue
            seen.add(st)
            cb.append((t - st) / 1e6)
            if r:
                rmw.append((r - st) / 1e6)
        return cb, rmw

    def correspondence(self) -> Dict[str, Any]:
        """Every output of every topic: its (stamp, frame_id) is a sent frame, no stamp twice,
        its size is the input's (and labels and confidence are mono8)."""
        w, h = self.frame_size
        report: Dict[str, Any] = {}
        ok = True
        for topic, recs in self.got.items():
            counts = Counter(r[0] for r in recs)
            unknown = [r for r in recs if r[0] not in self.sent or r[1] != self.frame_id]
            dup = sorted(st for st, c in counts.items() if c > 1)
            enc = "mono8" if topic in MONO8_OUTPUTS else "rgb8"
            bad = [r for r in recs if (r[4], r[5]) != (w, h) or r[6] != enc]
            t_ok = not unknown and not dup and not bad
            ok = ok and t_ok
            # informational: one worker publishes, so stamps should only go forward
            backwards = sum(1 for a, b in zip(recs, recs[1:]) if b[0] < a[0])
            report[topic] = {"outputs": len(recs), "unknown": len(unknown),
                             "duplicates": len(dup), "wrong_size_or_encoding": len(bad),
                             "out_of_order": backwards, "ok": t_ok,
                             "examples": [f"stamp {r[0]} frame_id {r[1]!r}"
                                          for r in unknown[:3]]
                             + [f"stamp {s} twice" for s in dup[:3]]
                             + [f"stamp {r[0]}: {r[4]}x{r[5]} {r[6]}" for r in bad[:3]]}
        report["ok"] = ok
        return report

    def node_window(self, t0_ns: int, t1_ns: int) -> Optional[Dict[str, Any]]:
        """The node's own figures between its first and last /diagnostics in [t0, t1]:
        counter deltas, rates, processing time and latency (means weighted by the output
        rate of each period, maxima over the periods)."""
        ds = [d for d in self.diags if t0_ns <= d["_stamp_ns"] <= t1_ns]
        if len(ds) < 2:
            return None
        a, b = ds[0], ds[-1]
        span = (b["_stamp_ns"] - a["_stamp_ns"]) / 1e9
        if span <= 0:
            return None

        def delta(k: str) -> int:
            try:
                return int(b[k]) - int(a[k])
            except (KeyError, ValueError):
                return 0
        inner = ds[1:]
        wts = np.array([max(_f(d, "output_rate_hz"), 0.0) for d in inner])

        def wmean(key: str) -> Optional[float]:
            v = np.array([_f(d, key) for d in inner])
            m = (wts > 0) & np.isfinite(v)
            return round(float((v[m] * wts[m]).sum() / wts[m].sum()), 2) if m.any() else None

        def vmax(key: str) -> Optional[float]:
            v = [_f(d, key) for d in inner if _f(d, "output_rate_hz") > 0]
            v = [x for x in v if np.isfinite(x)]
            return round(max(v), 2) if v else None

        sent = sum(1 for st in self.order if a["_stamp_ns"] < st <= b["_stamp_ns"])
        rec, proc, stale = delta("frames_received"), delta("frames_processed"), \
            delta("frames_dropped_stale")
        return {
            "window_s": round(span, 3), "diagnostics": len(ds),
            "sent_in_window": sent, "received": rec, "processed": proc,
            "dropped_stale": stale, "bad": delta("frames_bad"),
            "cache_resets": delta("cache_resets"), "inference_errors": delta("inference_errors"),
            "published_labels": delta("published_labels"),
            "input_rate_hz": round(rec / span, 2), "output_rate_hz": round(proc / span, 2),
            "stale_share": round(stale / rec, 4) if rec else None,
            "lost_before_node_share": round(max(0.0, 1 - rec / sent), 4) if sent else None,
            "processing_ms_mean": wmean("processing_ms_mean"),
            "processing_ms_max": vmax("processing_ms_max"),
            "latency_ms_mean": wmean("latency_ms_mean"),
            "latency_ms_max": vmax("latency_ms_max"),
        }

    def usage(self, m0: float, m1: float) -> Dict[str, Any]:
        """The node's resident memory (MB) and CPU use (cores) between two monotonic times."""
        s = [x for x in self.samples if m0 <= x[0] <= m1]
        if not s:
            return {}
        out: Dict[str, Any] = {"rss_mb_start": round(s[0][2] / 1024, 1),
                               "rss_mb_end": round(s[-1][2] / 1024, 1),
                               "rss_mb_max": round(max(x[2] for x in s) / 1024, 1)}
        if len(s) >= 2 and s[0][4] is not None and s[-1][4] is not None and s[-1][0] > s[0][0]:
            out["cpu_cores"] = round((s[-1][4] - s[0][4]) / (s[-1][0] - s[0][0]), 2)
        return out

    def totals(self) -> Optional[Dict[str, Any]]:
        """The node's counters in its latest /diagnostics."""
        if not self.diags:
            return None
        d = self.diags[-1]
        keys = ("frames_received", "frames_processed", "frames_dropped_stale", "frames_bad",
                "cache_resets", "inference_errors", "published_labels", "published_color_mask",
                "published_overlay", "published_confidence")
        out: Dict[str, Any] = {}
        for k in keys:
            try:
                out[k] = int(d[k])
            except (KeyError, ValueError):
                pass
        if {"frames_received", "frames_processed", "frames_dropped_stale",
                "frames_bad"} <= set(out):
            out["in_flight"] = (out["frames_received"] - out["frames_processed"]
                                - out["frames_dropped_stale"] - out["frames_bad"])
        out["device"] = d.get("device")
        return out


def _f(d: Dict[str, Any], key: str) -> float:
    try:
        return float(d.get(key, "nan"))
    except (TypeError, ValueError):
        return float("nan")


def stats_ms(values: Iterable[float]) -> Optional[Dict[str, float]]:
    """Count, mean, median, p90, p95, p99 and max of millisecond values (None when empty)."""
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return None
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {"n": int(a.size), "mean": round(float(a.mean()), 2), "median": round(float(p50), 2),
            "p90": round(float(p90), 2), "p95": round(float(p95), 2),
            "p99": round(float(p99), 2),
            "max": round(float(a.max()), 2), "min": round(float(a.min()), 2)}


def slope_per_min(t_s: Sequence[float], v: Sequence[float]) -> Optional[float]:
    """Least-squares slope of v over t (t in seconds), per minute."""
    if len(t_s) < 3 or max(t_s) - min(t_s) <= 0:
        return None
    k = np.polyfit(np.asarray(t_s, float), np.asarray(v, float), 1)[0]
    return float(k * 60.0)


def environment() -> Dict[str, Any]:
    """Host, CPUs, Python, package versions, RMW and date, for the JSON reports."""
    import importlib.metadata as md  # noqa: PLC0415
    versions = {}
    for dist in ("torch", "numpy", "rclpy", "ros-rclpy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    from msaf_core.hardware import cpu_description  # noqa: PLC0415
    return {"host": platform.node(), "machine": platform.machine(), "cpu": cpu_description(),
            "processor": platform.processor() or None, "cpus": os.cpu_count(),
            "python": platform.python_version(), "versions": versions,
            "rmw": os.environ.get("RMW_IMPLEMENTATION", "default"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_json(path: Optional[Path], report: Dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def fmt(v: Any, spec: str = ".0f") -> str:
    """A figure for a table: '-' for None and non-finite values."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)
