"""End-to-end benchmark of segment_node over real DDS: rate in, labels out, latency.

::

    msaf-bench-node [--checkpoint CKPT] [--device cpu] [--threads N]
        [--rates 5 10 30] [--duration 30] [--warmup 5] [--size 480x360]
        [--frames-dir DIR] [--subscribe-all] [--reliable] [--node-arg NAME:=VALUE ...]
        [--domain-id 91] [--json FILE] [--debug]

Starts the real node (``python -m msaf_ros.segment_node``, parameters as ``--ros-args``) as
a child process and, in this process, publishes ``sensor_msgs/Image`` ``rgb8`` frames on
``/camera/image_raw`` (the CamVid val frames in name order, resized to ``--size``, cycling,
one fixed ``frame_id``) at each rate of ``--rates`` for ``--warmup`` + ``--duration``
seconds. Each frame's header stamp is the wall-clock time just before it is published; the
node copies the input header to its outputs, so ``arrival - stamp`` of a ``labels``
message is the end-to-end latency: DDS in, queueing in the newest-frame slot, decoding,
inference, publishing, DDS out. Per rate it reports frames sent, labels received for them,
the share dropped (``1 - received/sent``), latency percentiles, the output rate, the node's
own ``/diagnostics`` over the measured window (processing time, frames it received,
processed and dropped as stale) and the node's CPU use and resident memory.

Only frames published in the measured window count; outputs are matched to inputs by
(stamp, frame_id). Between rates the publisher stops until the node's last outputs have
come. Exit codes: 0 done; 1 an output matched no sent frame, came twice or had the wrong
size; 2 the run could not be made (node did not start or died, no frames, bad option).

The machinery (:class:`~msaf_ros.tools.harness.Harness`) is shared with
:mod:`msaf_ros.tools.soak`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .harness import (CONFIDENCE, EXTRA_OUTPUTS, Harness, load_frames, make_harness,
                      node_program_parser, node_report, parse_size, positive, run_program)
from .report import LABELS, environment, fmt, stats_ms

DEFAULT_DOMAIN = 91


def build_parser() -> argparse.ArgumentParser:
    p = node_program_parser(
        "msaf-bench-node",
        "End-to-end benchmark of segment_node over real DDS: publishes camera frames at "
        "given rates and measures labels received, frames dropped and latency (input "
        "stamp to labels arrival).", DEFAULT_DOMAIN)
    p.add_argument("--rates", type=positive(float), nargs="+", default=[5.0, 10.0, 30.0],
                   help="input rates in Hz, one run each (5 10 30)")
    p.add_argument("--duration", type=positive(float), default=30.0,
                   help="measured seconds per rate (30)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds published at each rate before measuring (5)")
    p.add_argument("--size", type=parse_size, default=(480, 360),
                   help="frame size WIDTHxHEIGHT the frames are resized to (480x360)")
    p.add_argument("--subscribe-all", action="store_true",
                   help="also subscribe color_mask, overlay and confidence (the node then "
                        "computes them)")
    p.add_argument("--confidence", action="store_true",
                   help="also subscribe confidence (the node then computes it)")
    p.add_argument("--drain-timeout", type=positive(float), default=15.0,
                   help="seconds at most to wait for the last outputs of a rate (15)")
    return p


def run_rate(h: Harness, rate: float, args: argparse.Namespace, index: int) -> Dict[str, Any]:
    tag = f"measure#{index}@{rate:g}"
    h.stream(rate, f"warmup#{index}@{rate:g}", seconds=max(0.0, args.warmup))
    m0, w0 = time.monotonic(), time.time_ns()
    s = h.stream(rate, tag, seconds=args.duration)
    m1, w1 = time.monotonic(), time.time_ns()
    rec = h.rec
    stamps = rec.stamps(tag)
    lat_so_far, _ = rec.latencies_ms(rec.outputs_of(LABELS, stamps))
    quiet = max(1.0, 2.0 * (float(np.percentile(lat_so_far, 90)) / 1e3 if lat_so_far else 1.0))
    h.wait_quiet(tag, stamps, quiet=quiet, timeout=args.drain_timeout)
    labels = rec.outputs_of(LABELS, stamps)
    cb, rmw = rec.latencies_ms(labels)
    received = len({r[0] for r in labels})
    sent = len(stamps)
    row: Dict[str, Any] = {
        "rate_hz": rate, "duration_s": round(s["seconds"], 3), "sent": sent,
        "send_rate_hz": round(sent / s["seconds"], 2) if s["seconds"] > 0 else None,
        "late_sends": s["late"], "labels_received": received,
        "dropped": sent - received,
        "dropped_share": round(1 - received / sent, 4) if sent else None,
        "output_rate_hz": round(received / s["seconds"], 2) if s["seconds"] > 0 else None,
        "latency_ms": stats_ms(cb), "latency_rmw_ms": stats_ms(rmw),
        "node": rec.node_window(w0, w1), "node_usage": rec.usage(m0, m1),
    }
    extra = {}
    for t in h.outputs:
        if t == LABELS:
            continue
        recs = rec.outputs_of(t, stamps)
        extra[t] = {"received": len({r[0] for r in recs}),
                    "latency_ms": stats_ms(rec.latencies_ms(recs)[0])}
    if extra:
        row["other_outputs"] = extra
    return row


def print_table(report: Dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"segment_node end to end: {cfg['size']} frames, device {cfg['device']}, "
          f"threads {cfg['threads']}, {'reliable' if cfg['reliable'] else 'best-effort'} "
          f"input{', all outputs subscribed' if cfg['subscribe_all'] else ''}"
          f"{', confidence subscribed' if cfg.get('confidence') else ''}")
    if report.get("model"):
        print(f"  {report['model']}")
    print(f"  frames: {report['frames_source']}")
    hdr = (f"{'rate Hz':>7} {'sent':>6} {'labels':>6} {'dropped':>7} {'out Hz':>6} "
           f"{'lat p50':>8} {'p90':>6} {'p95':>6} {'p99':>6} {'max':>6} | {'node ms':>7} "
           f"{'stale':>6} {'lost':>5} {'resets':>6} {'cpu':>5} {'rss MB':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in report["rates"]:
        lat = r["latency_ms"] or {}
        node = r["node"] or {}
        use = r["node_usage"] or {}
        share = (lambda v: "-" if v is None else f"{100 * v:.0f}%")
        print(f"{r['rate_hz']:>7g} {r['sent']:>6} {r['labels_received']:>6} "
              f"{share(r['dropped_share']):>7} {fmt(r['output_rate_hz'], '.2f'):>6} "
              f"{fmt(lat.get('median')):>8} {fmt(lat.get('p90')):>6} {fmt(lat.get('p95')):>6} "
              f"{fmt(lat.get('p99')):>6} {fmt(lat.get('max')):>6} | "
              f"{fmt(node.get('processing_ms_mean')):>7} {share(node.get('stale_share')):>6} "
              f"{share(node.get('lost_before_node_share')):>5} "
              f"{fmt(node.get('cache_resets'), 'd'):>6} "
              f"{fmt(use.get('cpu_cores'), '.2f'):>5} {fmt(use.get('rss_mb_max')):>7}")
    print("latency: input stamp (publish time) to labels arrival, ms. node ms: the node's "
          "processing time per frame (/diagnostics). stale: frames the node replaced before "
          "segmenting them; lost: frames that never reached the node; resets: the node's "
          "feature-cache resets; cpu: cores the node used.")
    c = report["correspondence"]
    if not c["ok"]:
        for t, v in c.items():
            if isinstance(v, dict) and not v["ok"]:
                print(f"CORRESPONDENCE FAILED on {t}: {v['unknown']} unknown, "
                      f"{v['duplicates']} duplicated, {v['wrong_size_or_encoding']} wrong "
                      f"size/encoding; e.g. {'; '.join(v['examples'])}")


def run(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    t_start = time.monotonic()
    frames, source = load_frames(args.frames_dir, args.size)
    outputs = [LABELS] + (list(EXTRA_OUTPUTS) if args.subscribe_all else
                          [CONFIDENCE] if args.confidence else [])
    h = make_harness(args, frames, outputs)
    report: Dict[str, Any] = {
        "benchmark": "msaf_ros.bench_node",
        "config": {"checkpoint": args.checkpoint or "(bundled)", "device": args.device,
                   "threads": args.threads, "rates_hz": args.rates,
                   "duration_s": args.duration, "warmup_s": args.warmup,
                   "size": f"{args.size[0]}x{args.size[1]}", "frame_id": args.frame_id,
                   "subscribe_all": args.subscribe_all, "confidence": args.confidence,
                   "reliable": args.reliable,
                   "diag_period_s": args.diag_period,
                   "node_args": [f"{k}:={v}" for k, v in args.node_arg],
                   "domain_id": args.domain_id},
        "environment": environment(), "frames_source": source, "source_frames": len(frames),
    }
    del frames
    rec = h.rec
    try:
        h.start(args.startup_timeout)
        report["model"] = h.model_line
        h.prime(args.rates[0], args.startup_timeout)
        h.wait_quiet("prime", rec.stamps("prime"), quiet=1.0, timeout=args.drain_timeout)
        report["rates"] = [run_rate(h, rate, args, i) for i, rate in enumerate(args.rates)]
        # The node's counters once it is idle: every frame it received is accounted for.
        last = max(r[2] for recs in rec.got.values() for r in recs)
        fresh = h.wait_fresh_diag(last, 3 * args.diag_period + 2)
        report["node_totals"] = rec.totals() if fresh is not None else None
        report["all_frames"] = {"sent": len(rec.order), "labels_received": len(rec.got[LABELS])}
        report["correspondence"] = rec.correspondence()
    finally:
        h.close()
    report.update(node_report(h))
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    return (0 if report["correspondence"]["ok"] else 1), report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``msaf-bench-node``."""
    return run_program("bench_node", argv, build_parser(), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
