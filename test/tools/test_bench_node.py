"""Smoke tests of the node benchmarks (msaf-bench-node, msaf-soak).

Each program runs for a few seconds as its own process, with the tiny checkpoint and small
frames; the tests check the report's structure and that its figures agree with each other
(every output matches a sent frame, counts add up, percentiles are ordered). Never speed:
timing is what the programs print, not what tests assert.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from msaf_ros.errors import BenchError
from msaf_ros.tools.harness import load_frames, node_param, parse_size
from msaf_ros.tools.report import Recording, stats_ms

from conftest import CAMVID, ROOT, camvid_available

no_rclpy = pytest.mark.skipif(importlib.util.find_spec("rclpy") is None,
                              reason="rclpy (ROS 2) is not importable")
SIZE = "160x120"
TIMEOUT = 240         # seconds a program may run here (loaded CI machines start torch slowly)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """The CamVid val frames, or a few synthetic ones where CamVid is absent."""
    if camvid_available():
        return CAMVID / "val"
    from PIL import Image
    d = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
            d / f"f{i:03d}.png")
    return d


def run_program(module: str, args, tmp_path: Path, timeout: float = TIMEOUT):
    """Run ``python -m module args --json FILE``; returns (completed process, report)."""
    out = tmp_path / f"{module.rsplit('.', 1)[-1]}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "")
                                                        .split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    report = json.loads(out.read_text()) if out.is_file() else None
    return proc, report


def check_latency(stats, n):
    assert stats is not None and stats["n"] == n
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["p95"] <= stats["p99"] \
        <= stats["max"]
    assert stats["min"] > 0          # arrival after the stamp: one clock for both


def check_correspondence(c, topics):
    assert c["ok"], c
    for t in topics:
        assert c[t]["unknown"] == 0 and c[t]["duplicates"] == 0
        assert c[t]["wrong_size_or_encoding"] == 0 and c[t]["outputs"] > 0


# -- helpers (no ROS) --------------------------------------------------------------------------
def test_parsers_and_stats():
    assert parse_size("1024x512") == (1024, 512)
    assert node_param("inference_height:=360") == ("inference_height", "360")
    import argparse
    for bad in ("1024", "4x4", "ax3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        node_param("no_value")
    s = stats_ms([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["n"] == 5 and s["median"] == 3.0 and s["max"] == 100.0 and s["min"] == 1.0
    assert stats_ms([]) is None


def test_load_frames_resizes(frames_dir):
    frames, source = load_frames(frames_dir, (64, 48))
    assert frames and all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert source == str(frames_dir)
    with pytest.raises(BenchError):
        load_frames(frames_dir / "missing", (64, 48))


def test_correspondence_finds_unknown_duplicate_and_wrong_size():
    rec = Recording("cam", (16, 12), ["/labels"])
    rec.sent = {100: (0, "t", 100), 200: (1, "t", 200), 300: (2, "t", 300)}
    rec.order = [100, 200, 300]
    good = [(100, "cam", 150, 0, 16, 12, "mono8"), (200, "cam", 260, 0, 16, 12, "mono8")]
    rec.got["/labels"] = list(good)
    assert rec.correspondence()["ok"]
    rec.got["/labels"] = good + [(999, "cam", 1000, 0, 16, 12, "mono8"),     # never sent
                                 (200, "cam", 270, 0, 16, 12, "mono8"),      # twice
                                 (300, "other", 350, 0, 16, 12, "mono8"),    # other camera
                                 (300, "cam", 360, 0, 8, 6, "mono8")]        # wrong size
    c = rec.correspondence()
    assert not c["ok"]
    lab = c["/labels"]
    assert (lab["unknown"], lab["duplicates"], lab["wrong_size_or_encoding"]) == (2, 2, 1)
    cb, _ = rec.latencies_ms(good)
    assert cb == [50 / 1e6, 60 / 1e6]


# -- the programs over real DDS ------------------------------------------------------------------
@pytest.mark.ros
@no_rclpy
def test_bench_node_smoke(tiny_checkpoint, frames_dir, tmp_path):
    rates = [5, 10]
    proc, r = run_program("msaf_ros.tools.bench_node", [
        "--checkpoint", tiny_checkpoint, "--threads", 1, "--rates", *rates, "--duration", 2,
        "--warmup", 0.5, "--size", SIZE, "--diag-period", 0.25, "--subscribe-all",
        "--frames-dir", frames_dir, "--domain-id", 95], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert r is not None
    assert "rate Hz" in proc.stdout and "latency" in proc.stdout
    assert r["config"]["size"] == SIZE and r["model"].startswith("model ")
    assert "CPUs" in r["environment"]["cpu"]           # the CPU named with its units
    assert [row["rate_hz"] for row in r["rates"]] == rates
    sent_total = 0
    for row in r["rates"]:
        sent, got = row["sent"], row["labels_received"]
        sent_total += sent
        assert sent > 0 and 0 < got <= sent
        assert row["dropped"] == sent - got
        assert row["dropped_share"] == pytest.approx(1 - got / sent, abs=1e-4)
        check_latency(row["latency_ms"], got)
        assert row["output_rate_hz"] == pytest.approx(got / row["duration_s"], rel=1e-2)
        for t in ("/color_mask", "/overlay", "/confidence"):
            assert 0 <= row["other_outputs"][t]["received"] <= sent
        node = row["node"]
        if node is not None:       # the node's own counters over its diagnostics window
            assert node["received"] <= node["sent_in_window"] + 1   # +1: a frame in transit

            assert node["processed"] + node["dropped_stale"] <= node["received"] + 2
            assert node["inference_errors"] == 0 and node["bad"] == 0
        assert row["node_usage"]["rss_mb_max"] > 0
    # The whole run: the node, idle at the end, accounts for every frame it received, and
    # every labels message it published arrived here.
    tot, all_ = r["node_totals"], r["all_frames"]
    assert all_["sent"] >= sent_total
    assert tot["in_flight"] == 0
    assert tot["frames_received"] <= all_["sent"]
    assert tot["frames_processed"] == tot["published_labels"] == all_["labels_received"]
    assert tot["published_color_mask"] > 0 and tot["published_overlay"] > 0
    assert tot["published_confidence"] > 0
    check_correspondence(r["correspondence"], ("/labels", "/color_mask", "/overlay",
                                               "/confidence"))


@pytest.mark.ros
@no_rclpy
@pytest.mark.parametrize("sig,domain", [("INT", 96), ("TERM", 97)])
def test_soak_smoke(tiny_checkpoint, frames_dir, tmp_path, sig, domain):
    n = 24
    proc, r = run_program("msaf_ros.tools.soak", [
        "--checkpoint", tiny_checkpoint, "--threads", 1, "--frames", n, "--rate", 12,
        "--warmup", 0.5, "--size", SIZE, "--diag-period", 0.25, "--signal", sig,
        "--exit-limit", 60, "--frames-dir", frames_dir, "--domain-id", domain], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert r is not None and "checks:" in proc.stdout
    f = r["frames"]
    assert f["sent"] == n and 0 < f["received"] <= n
    assert f["dropped"] == n - f["received"]
    lat = r["latency_ms"]
    check_latency(lat["all"], f["received"])
    assert lat["all"]["sent"] == n
    for part in ("first_quarter", "last_quarter"):
        q = lat[part]
        if q is not None:
            assert q["sent"] == n // 4 and q["n"] == q["received"] <= q["sent"]
            assert q["max"] <= lat["max_ms"] + 1e-6
    assert lat["max_ms"] == pytest.approx(lat["all"]["max"], abs=0.01)
    rss = r["rss"]
    if rss["available"]:
        assert rss["min_mb"] <= rss["start_mb"] <= rss["max_mb"]
        assert rss["min_mb"] <= rss["end_mb"] <= rss["max_mb"]
        assert rss["growth_mb"] == pytest.approx(rss["end_mb"] - rss["start_mb"], abs=0.11)
    check_correspondence(r["correspondence"], ("/labels",))
    assert r["all_frames"]["labels_received"] == r["correspondence"]["/labels"]["outputs"]
    ex = r["exit"]
    assert ex["signal"] == f"SIG{sig}" and ex["exit_code"] == 0
    assert not ex["killed_after_timeout"] and not ex["traceback_in_log"]
    assert r["checks"]["correspondence"] is True and r["checks"]["clean_exit"] is True


@pytest.mark.ros
@no_rclpy
def test_bad_checkpoint_is_one_line_exit_2(frames_dir, tmp_path):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    proc, r = run_program("msaf_ros.tools.soak", [
        "--checkpoint", bad, "--frames", 5, "--size", SIZE, "--frames-dir", frames_dir,
        "--domain-id", 98, "--startup-timeout", 120], tmp_path)
    assert proc.returncode == 2 and r is None
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("soak: error: segment_node did not start")
    assert "checkpoint" in lines[0] and "Traceback" not in proc.stderr


def test_bad_size_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "msaf_ros.tools.bench_node", "--size", "7x7"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "WIDTHxHEIGHT" in proc.stderr


@pytest.mark.ros
@no_rclpy
def test_no_node_left_behind_after_sigint(tiny_checkpoint, frames_dir, tmp_path):
    """SIGINT to the benchmark itself stops it, and its node, without a report."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "msaf_ros.tools.bench_node", "--checkpoint",
                          str(tiny_checkpoint), "--threads", "1", "--rates", "5", "--duration",
                          "600", "--warmup", "0", "--size", SIZE, "--frames-dir",
                          str(frames_dir), "--domain-id", "99"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        node_pid = None
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and node_pid is None and p.poll() is None:
            kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True)
            node_pid = int(kids.stdout.split()[0]) if kids.stdout.split() else None
            time.sleep(0.2)
        assert node_pid is not None, p.communicate(timeout=30)
        time.sleep(3.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130, out + err
        assert "interrupted" in err
        gone = time.monotonic() + 10
        while Path(f"/proc/{node_pid}").exists() and time.monotonic() < gone:
            time.sleep(0.1)
        assert not Path(f"/proc/{node_pid}").exists(), "the node outlived the benchmark"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
