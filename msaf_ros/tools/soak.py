"""Soak / load test of segment_node: a long run at camera rate, then a signal.

::

    msaf-soak [--checkpoint CKPT] [--device cpu] [--threads N]
        [--frames 2000] [--rate 30] [--size 1024x512] [--warmup 10]
        [--signal INT|TERM] [--exit-limit 2.0] [--strict] [--json FILE] [--debug]

Starts the real node as a child process and publishes ``--frames`` frames (CamVid val frames
resized to ``--size``, cycling) at ``--rate`` Hz after a warm-up. It records every input
stamp sent, every ``labels`` message received (stamp, frame_id, arrival time) and, once a
second, the node process's resident memory (``VmRSS`` of ``/proc/PID/status``) and CPU
time. When the frames are sent it goes on publishing (frames outside the count) until the
node's last outputs for them have come, then sends the node SIGINT (or ``--signal TERM``)
while still publishing, so the node is mid-inference, and measures the time until the
process has exited and its exit code.

Reports: frames sent / received / dropped; latency (input stamp to labels arrival) over the
run and in its first and last quarter (by send order), its trend, and the maximum; the
node's RSS at the start of the measured run (after the warm-up), at its end, its maximum and
growth in MB and %; whether every output's (stamp, frame_id) is a frame that was sent and
none came twice; the exit on the signal.

Checks and exit code: 0 every check passed; 1 the correspondence check failed (an output
matched no sent frame, came twice, or had the wrong size), or the node did not exit with
code 0 within ``--exit-limit`` seconds of the signal; with ``--strict`` also when latency
grew (last-quarter p90 above ``--max-latency-growth`` times the first quarter's) or RSS grew
by more than ``--max-rss-growth-mb``; 2 the run could not be made.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .harness import (Harness, load_frames, make_harness, node_program_parser, node_report,
                      parse_size, positive, run_program)
from .report import LABELS, Recording, environment, slope_per_min, stats_ms

DEFAULT_DOMAIN = 92
EDGE_S = 5.0     # RSS start/end: median of the samples in the first/last 5 s of the run


def build_parser() -> argparse.ArgumentParser:
    p = node_program_parser(
        "msaf-soak",
        "Soak test of segment_node: --frames frames at --rate Hz; latency must stay "
        "bounded, memory flat, every output must match a sent frame; then SIGINT/SIGTERM "
        "must end the node cleanly.", DEFAULT_DOMAIN)
    p.add_argument("--frames", type=positive(int), default=2000,
                   help="frames published in the measured run (2000)")
    p.add_argument("--rate", type=positive(float), default=30.0, help="input rate, Hz (30)")
    p.add_argument("--size", type=parse_size, default=(1024, 512),
                   help="frame size WIDTHxHEIGHT (1024x512)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="seconds published before the measured run (10)")
    p.add_argument("--signal", choices=("INT", "TERM"), default="INT",
                   help="signal that ends the node at the end (INT)")
    p.add_argument("--exit-limit", type=positive(float), default=2.0,
                   help="seconds the node may take to exit after the signal (2.0)")
    p.add_argument("--exit-timeout", type=positive(float), default=15.0,
                   help="seconds after the signal before the node is killed (15)")
    p.add_argument("--drain-timeout", type=positive(float), default=15.0,
                   help="seconds at most to wait for the last outputs of the run (15)")
    p.add_argument("--max-latency-growth", type=positive(float), default=1.5,
                   help="latency is 'bounded' when the last quarter's p90 is at most this "
                        "times the first quarter's (1.5)")
    p.add_argument("--max-rss-growth-mb", type=positive(float), default=50.0,
                   help="memory is 'flat' when RSS grows by at most this many MB (50)")
    p.add_argument("--strict", action="store_true",
                   help="also fail (exit 1) when latency grew or memory was not flat")
    return p


def latency_report(rec: Recording, stamps: List[int]) -> Dict[str, Any]:
    """Latency over the run, in its first and last quarter (by send order), and its trend."""
    recs = rec.outputs_of(LABELS, stamps)
    first_arrival: Dict[int, int] = {}
    for st, _fid, t, *_ in recs:
        first_arrival.setdefault(st, t)
    q = len(stamps) // 4

    def part(sts: Sequence[int]) -> Optional[Dict[str, Any]]:
        lat = [(first_arrival[s] - s) / 1e6 for s in sts if s in first_arrival]
        out = stats_ms(lat)
        if out is not None:
            out["sent"] = len(sts)
            out["received"] = len(lat)
        return out
    got = [s for s in stamps if s in first_arrival]
    t_s = [(s - stamps[0]) / 1e9 for s in got]
    lat_all = [(first_arrival[s] - s) / 1e6 for s in got]
    first, last = (part(stamps[:q]), part(stamps[-q:])) if q else (None, None)
    ratio = None
    if first and last and first["p90"] > 0:
        ratio = round(last["p90"] / first["p90"], 3)
    slope = slope_per_min(t_s, lat_all)
    return {"all": part(stamps), "first_quarter": first, "last_quarter": last,
            "p90_ratio_last_to_first": ratio,
            "trend_ms_per_min": None if slope is None else round(slope, 2),
            "max_ms": round(max(lat_all), 2) if lat_all else None}


def rss_report(rec: Recording, m0: float, m1: float) -> Dict[str, Any]:
    """The node's resident memory between two monotonic times: start and end (medians of
    the first and last EDGE_S seconds), maximum, growth, trend and the series."""
    s = [(t, kb / 1024.0) for t, _w, kb, _hwm, _cpu in rec.samples if m0 <= t <= m1]
    if not s:
        return {"available": False}
    t_rel = [t - m0 for t, _ in s]
    mb = [v for _, v in s]
    head = [v for t, v in s if t - m0 <= EDGE_S] or mb[:1]
    tail = [v for t, v in s if m1 - t <= EDGE_S] or mb[-1:]
    start, end = float(np.median(head)), float(np.median(tail))
    slope = slope_per_min(t_rel, mb)
    cpu = [(t, c) for t, _w, _kb, _hwm, c in rec.samples if m0 <= t <= m1 and c is not None]
    out = {"available": True, "samples": len(s), "start_mb": round(start, 1),
           "end_mb": round(end, 1), "max_mb": round(max(mb), 1),
           "min_mb": round(min(mb), 1), "first_sample_mb": round(mb[0], 1),
           "last_sample_mb": round(mb[-1], 1),
           "growth_mb": round(end - start, 1),
           "growth_pct": round(100.0 * (end - start) / start, 2) if start else None,
           "max_over_start_mb": round(max(mb) - start, 1),
           "trend_mb_per_min": None if slope is None else round(slope, 3),
           "hwm_mb": round(max((x[3] or 0) for x in rec.samples) / 1024, 1),
           "series_mb": [[round(t, 1), round(v, 1)] for t, v in zip(t_rel, mb)]}
    if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
        out["node_cpu_cores"] = round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 2)
    return out


def signal_under_load(h: Harness, sig: int, rate: float, limit: float, timeout: float
                      ) -> Dict[str, Any]:
    """Send ``sig`` to the node while frames keep coming; time until its process ended."""
    proc = h.node.proc
    h.expect_exit = True
    ended: Dict[str, float] = {}

    def waiter() -> None:
        try:
            proc.wait()
        finally:
            ended["t"] = time.monotonic()

    busy = h.rec.diags[-1].get("_message", "") if h.rec.diags else ""
    t0 = time.monotonic()
    proc.send_signal(sig)
    th = threading.Thread(target=waiter, name="node-exit", daemon=True)
    th.start()
    s = h.stream(rate, "tail", seconds=timeout, until=lambda: "t" in ended)
    killed = False
    if "t" not in ended:
        proc.kill()
        killed = True
    th.join(10)
    seconds = ended.get("t", time.monotonic()) - t0
    rc = proc.returncode
    log = h.node.output
    return {"signal": signal.Signals(sig).name, "exit_code": rc,
            "seconds": round(seconds, 3), "limit_s": limit, "killed_after_timeout": killed,
            "frames_published_meanwhile": s["sent"], "node_status_before": busy,
            "traceback_in_log": "Traceback" in log,
            "ok": (not killed) and rc == 0 and seconds <= limit}


def run(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    t_start = time.monotonic()
    frames, source = load_frames(args.frames_dir, args.size)
    h = make_harness(args, frames)
    sig = signal.SIGINT if args.signal == "INT" else signal.SIGTERM
    report: Dict[str, Any] = {
        "benchmark": "msaf_ros.soak",
        "config": {"checkpoint": args.checkpoint or "(bundled)", "device": args.device,
                   "threads": args.threads, "frames": args.frames, "rate_hz": args.rate,
                   "size": f"{args.size[0]}x{args.size[1]}", "warmup_s": args.warmup,
                   "frame_id": args.frame_id, "reliable": args.reliable,
                   "signal": f"SIG{args.signal}", "exit_limit_s": args.exit_limit,
                   "node_args": [f"{k}:={v}" for k, v in args.node_arg],
                   "domain_id": args.domain_id, "strict": args.strict},
        "environment": environment(), "frames_source": source, "source_frames": len(frames),
    }
    del frames
    try:
        h.start(args.startup_timeout)
        report["model"] = h.model_line
        h.prime(args.rate, args.startup_timeout)
        if args.warmup > 0:
            h.stream(args.rate, "warmup", seconds=args.warmup)
        report.update(soak(h, args))
        report["exit"] = signal_under_load(h, sig, args.rate, args.exit_limit,
                                           args.exit_timeout)
        report["correspondence"] = h.rec.correspondence()
        report["all_frames"] = {"sent": len(h.rec.order),
                                "labels_received": len(h.rec.got[LABELS])}
    finally:
        h.close()
    report.update(node_report(h))
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    report["checks"] = checks(report, args)
    hard = [report["checks"]["correspondence"], report["checks"]["clean_exit"]]
    if args.strict:
        hard += [report["checks"]["latency_bounded"] is not False,
                 report["checks"]["memory_flat"] is not False]
    return (0 if all(hard) else 1), report


def soak(h: Harness, args: argparse.Namespace) -> Dict[str, Any]:
    """The measured run: ``--frames`` frames at ``--rate``, then the wait for their outputs
    (frames keep coming meanwhile). Returns the frames, latency, rss and node parts."""
    rec = h.rec
    h.sample(force=True)
    m0, w0 = time.monotonic(), time.time_ns()
    s = h.stream(args.rate, "soak", frames=args.frames)
    m1, w1 = time.monotonic(), time.time_ns()
    h.sample(force=True)
    stamps = rec.stamps("soak")
    lat_now = [(t - st) / 1e6 for st, _f, t, *_ in rec.outputs_of(LABELS, stamps)]
    quiet = max(1.0, 2.0 * float(np.percentile(lat_now, 90)) / 1e3) if lat_now else 3.0
    drained = h.wait_quiet("soak", stamps, quiet=quiet, timeout=args.drain_timeout,
                           rate=args.rate)
    received = len({r[0] for r in rec.outputs_of(LABELS, stamps)})
    span = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
    frames = {
        "sent": len(stamps), "received": received, "dropped": len(stamps) - received,
        "dropped_share": round(1 - received / len(stamps), 4) if stamps else None,
        "run_s": round(span, 2),
        # (n - 1) intervals between the first and the last frame
        "send_rate_hz": round((len(stamps) - 1) / span, 2) if span > 0 else None,
        "late_sends": s["late"],
        "output_rate_hz": round(received * (len(stamps) - 1) / len(stamps) / span, 2)
        if span > 0 else None,
        "drain_s": round(drained, 2)}
    return {"frames": frames, "latency_ms": latency_report(rec, stamps),
            "rss": rss_report(rec, m0, m1), "node": rec.node_window(w0, w1),
            "node_totals_before_signal": rec.totals()}


def checks(report: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Optional[bool]]:
    """The soak's verdicts (None: not measurable in this run)."""
    lat, rss = report["latency_ms"], report["rss"]
    ratio = lat.get("p90_ratio_last_to_first")
    return {
        "correspondence": report["correspondence"]["ok"],
        "clean_exit": report["exit"]["ok"],
        "latency_bounded": None if ratio is None else ratio <= args.max_latency_growth,
        "memory_flat": (None if not rss.get("available")
                        else rss["growth_mb"] <= args.max_rss_growth_mb),
    }


def print_summary(r: Dict[str, Any]) -> None:
    c, f, lat, rss, ex = r["config"], r["frames"], r["latency_ms"], r["rss"], r["exit"]
    print(f"segment_node soak: {f['sent']} frames of {c['size']} at {c['rate_hz']:g} Hz "
          f"(sent at {f['send_rate_hz']} Hz, {f['late_sends']} late), device {c['device']}, "
          f"threads {c['threads']}")
    if r.get("model"):
        print(f"  {r['model']}")
    print(f"  frames: sent {f['sent']}, labels received {f['received']}, dropped "
          f"{f['dropped']} ({100 * (f['dropped_share'] or 0):.1f}%), output "
          f"{f['output_rate_hz']} Hz")
    node = r.get("node") or {}
    if node:
        print(f"  node: processing {node.get('processing_ms_mean')} ms/frame (max "
              f"{node.get('processing_ms_max')}), received {node['received']} of "
              f"{node['sent_in_window']} sent in its window, {node['dropped_stale']} dropped "
              f"stale, {node['bad']} bad, {node['inference_errors']} errors, "
              f"{node['cache_resets']} cache resets")

    def q(x: Optional[Dict[str, Any]]) -> str:
        return "-" if not x else (f"p50 {x['median']:.0f} p90 {x['p90']:.0f} p99 "
                                  f"{x['p99']:.0f} max {x['max']:.0f} ms (n={x['n']})")
    print(f"  latency all:           {q(lat['all'])}")
    print(f"  latency first quarter: {q(lat['first_quarter'])}")
    print(f"  latency last quarter:  {q(lat['last_quarter'])}")
    print(f"  latency p90 last/first {lat['p90_ratio_last_to_first']}, trend "
          f"{lat['trend_ms_per_min']} ms/min, max {lat['max_ms']} ms")
    if rss.get("available"):
        print(f"  node RSS: start {rss['start_mb']} MB, end {rss['end_mb']} MB, max "
              f"{rss['max_mb']} MB; growth {rss['growth_mb']:+.1f} MB "
              f"({rss['growth_pct']:+.2f}%), trend {rss['trend_mb_per_min']} MB/min, "
              f"node CPU {rss.get('node_cpu_cores')} cores")
    else:
        print("  node RSS: not available (/proc unreadable)")
    cor = r["correspondence"]
    for t, v in cor.items():
        if isinstance(v, dict):
            print(f"  correspondence {t}: {v['outputs']} outputs, {v['unknown']} unknown, "
                  f"{v['duplicates']} duplicated, {v['wrong_size_or_encoding']} wrong "
                  f"size/encoding{'' if v['ok'] else ' -> FAILED: ' + '; '.join(v['examples'])}")
    print(f"  {ex['signal']}: exit code {ex['exit_code']} after {ex['seconds']:.2f} s "
          f"(limit {ex['limit_s']:g} s){' KILLED' if ex['killed_after_timeout'] else ''}, "
          f"{ex['frames_published_meanwhile']} frames published meanwhile"
          f"{', traceback in the log' if ex['traceback_in_log'] else ''}")
    names = {True: "pass", False: "FAIL", None: "n/a"}
    print("  checks: " + ", ".join(f"{k} {names[v]}" for k, v in r["checks"].items()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``msaf-soak``."""
    return run_program("soak", argv, build_parser(), run, print_summary)


if __name__ == "__main__":
    sys.exit(main())
