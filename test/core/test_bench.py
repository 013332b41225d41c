"""Smoke tests of msaf-bench (msaf_core.tools.bench): it runs every mode on tiny inputs and writes
figures that hang together. No test asserts a time or a ratio target: those are measured and
reported (docs/benchmarks.md), never asserted."""
from __future__ import annotations

import json

import pytest
import torch

from msaf_core.tools import bench


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_model_mode_writes_stages_ratios_and_memory(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--sizes", "64x48", "--backbones", "resnet18", "--repeats", "2",
                       "--warmup", "1", "--threads", "1", "--dim", "32", "--heads", "2",
                       "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["command"].startswith("msaf-bench ")
    (r,) = doc["results"]
    assert r["size"] == "64x48" and r["backbone"] == "resnet18"
    assert (r["dim"], r["heads"]) == (32, 2)
    assert set(r["ms"]) == {"streamed", "uncached", "single_frame_limit"}
    assert set(r["stages_ms"]) == set(bench.STAGES)
    assert all(v > 0 for v in r["ms"].values())
    # the stages are parts of the streamed frame: their sum cannot exceed it by much
    assert sum(r["stages_ms"].values()) <= 1.5 * r["ms"]["streamed"]
    assert r["ratio_streamed_vs_uncached"] == pytest.approx(r["ms"]["streamed"] / r["ms"]["uncached"])
    assert all(v > 0 for v in r["peak_mem_mb"].values())
    printed = capsys.readouterr().out
    assert "streamed/uncached" in printed and "streamed/limit" in printed


def test_streamed_and_uncached_paths_compute_the_same_labels():
    """The benchmark's streamed closure (cache + head) and uncached closure (full forward)
    must be timing the same computation."""
    variants, clock, _ = bench._make_variants("resnet18", (64, 48), torch.device("cpu"), False, "fp32")
    a, b = variants["streamed"](), variants["uncached"]()
    assert a is not None and b is not None
    assert (a == b).all()


def test_transformer_mode_reports_both_joint_baselines(tmp_path):
    out = tmp_path / "t.json"
    assert bench.main(["transformer", "--size", "64x64", "--repeats", "1", "--warmup", "1",
                       "--threads", "1", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["grid"] == "8x8" and r["tokens_per_frame"] == 64
    for k in ("decoupled_ms", "joint_ms", "joint_t_queries_ms"):
        assert r[k] > 0
    assert r["time_ratio_joint_over_decoupled"] == pytest.approx(r["joint_ms"] / r["decoupled_ms"])


def test_joint_baseline_frame_t_queries_equal_full_rows():
    from msaf_core import MSAFConfig
    torch.manual_seed(0)
    cfg = MSAFConfig(dim=16, heads=2, dcn_groups=2)
    joint = bench.JointSpatioTemporalTransformer(cfg).double().eval()
    xs = [torch.randn(1, 16, 5, 6, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        assert torch.allclose(joint(xs), joint(xs, frame_t_only=True), atol=1e-12)


def test_dcn_mode_agrees_with_torchvision(tmp_path):
    out = tmp_path / "d.json"
    assert bench.main(["dcn", "--size", "64x48", "--repeats", "1", "--warmup", "0",
                       "--threads", "1", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["max_abs_difference"] < 1e-4


def test_profile_mode_splits_every_stage_into_kernel_families(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert bench.main(["profile", "--sizes", "64x48", "--backbones", "resnet18", "--repeats", "1",
                       "--warmup", "1", "--threads", "1", "--dim", "32", "--heads", "2",
                       "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["mode"] == "profile" and r["fold_bn"] is True
    assert set(r["stages"]) == set(bench.STAGES)
    for name, st in r["stages"].items():
        kinds = st["kinds"]
        assert set(kinds) <= set(bench.PROFILE_KINDS) and "other" in kinds
        assert sum(c["ms"] for c in kinds.values()) == pytest.approx(st["ms"], rel=1e-6, abs=1e-6)
    # the kernels land in the stages that run them, with the work the profiler counts
    assert r["stages"]["backbone"]["kinds"]["conv"]["gflop"] > 0
    assert r["stages"]["pst"]["kinds"]["attention"]["gflop"] > 0
    assert r["stages"]["att"]["kinds"]["sampling"]["ms"] > 0
    assert "attention" not in r["stages"]["backbone"]["kinds"]
    assert "kernel family" in capsys.readouterr().out


def test_attention_flops_count_both_products():
    # softmax(QK^T)V for 2 heads, 5 queries, 7 keys, 4 dims: 2·(2·5·7·4) multiply-adds ×2
    assert bench._attention_flops([[1, 2, 5, 4], [1, 2, 7, 4], [1, 2, 7, 4]]) == 4 * 2 * 5 * 7 * 4
