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


def test_profile_mode_shows_the_user_only_our_messages():
    """The profiler's C++ side logs profiler_start/stop lines and, without a GPU, an ERROR
    about the GPU count to stderr; a user of msaf-bench profile must not see them."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    p = subprocess.run([sys.executable, "-m", "msaf_core.tools.bench", "profile", "--sizes",
                        "48x32", "--backbones", "resnet18", "--repeats", "1", "--warmup", "0",
                        "--threads", "1", "--dim", "16", "--heads", "2"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "kernel family" in p.stdout
    for noise in ("USDT", "profiler_start", "profiler_stop", "gpuGetDeviceCount", "ERROR"):
        assert noise not in p.stderr, p.stderr


def test_quiet_profiler_passes_other_stderr_lines_on(capfd):
    import os
    with bench.quiet_profiler():
        os.write(2, b"USDT:2026-12-02 05:39:59 9916:9916 SyncActivityProfilerHandler.cpp:39] "
                    b"profiler_start\n")
        os.write(2, b"a warning of our own\n")
    err = capfd.readouterr().err
    assert err == "a warning of our own\n"


def test_backends_mode_compares_engines_on_one_checkpoint(tiny_checkpoint, tmp_path_factory,
                                                          tmp_path, monkeypatch, capsys):
    """Each backend and precision runs the streamed frame; combinations that cannot run (no
    int8 graphs in a plain export) are reported, not dropped. The export cache is the
    session's, shared with test_export_backends."""
    pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript")
    pytest.importorskip("onnxruntime", reason="pip install .[onnxruntime]")
    pytest.importorskip("openvino", reason="pip install .[openvino]")
    from msaf_core.export import RECORD_NAME, cache_key
    from msaf_core.tools import export as export_tool
    cache = tmp_path_factory.getbasetemp() / "msaf_cache"
    exported = cache / "exports" / cache_key(tiny_checkpoint)
    if not (exported / RECORD_NAME).is_file():          # made by the command, as there
        exported.parent.mkdir(parents=True, exist_ok=True)
        assert export_tool.main(["--format", "onnx", str(tiny_checkpoint), str(exported)]) == 0
    monkeypatch.setenv("MSAF_CACHE_DIR", str(cache))
    out = tmp_path / "b.json"
    assert bench.main(["--backends", "torch", "onnxruntime", "openvino", "--precisions", "fp32",
                       "bf16", "int8", "--checkpoint", str(tiny_checkpoint), "--sizes", "64x48",
                       "--repeats", "1", "--warmup", "0", "--threads", "1", "--confidence",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    ran = {(r["backend"], r["precision"]): r for r in rows if "error" not in r}
    assert set(ran) == {("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"),
                        ("openvino", "fp32"), ("openvino", "bf16")}
    assert all(r["size"] == "64x48" and r["streamed_ms"] > 0 for r in ran.values())
    assert all(r["confidence_ms"] > 0 and "confidence_cost_ms" in r and r["confidence_op_ms"] > 0
               for r in ran.values())
    assert ran[("torch", "fp32")]["speedup_vs_torch_fp32"] == pytest.approx(1.0)
    (failed,) = [r for r in rows if "error" in r]
    assert (failed["backend"], failed["precision"]) == ("openvino", "int8")
    assert "no int8 graphs" in failed["error"]
    printed = capsys.readouterr().out
    assert "vs torch fp32" in printed and "not run: " in printed and "+confidence ms" in printed


def test_backends_mode_runs_torch_at_the_export_folders_stride(tiny_checkpoint, tmp_path_factory,
                                                              tmp_path, monkeypatch):
    """``--export`` made at output stride 16 and no ``--output-stride``: torch runs at 16
    too, so that the speed-up column compares one network; each row names its stride."""
    pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript")
    pytest.importorskip("onnxruntime", reason="pip install .[onnxruntime]")
    from msaf_core.export import cached_export
    cache = tmp_path_factory.getbasetemp() / "msaf_cache"
    folder16 = cached_export(tiny_checkpoint, cache, output_stride=16)
    monkeypatch.setenv("MSAF_CACHE_DIR", str(cache))
    out = tmp_path / "b16.json"
    assert bench.main(["--backends", "torch", "onnxruntime", "--precisions", "fp32",
                       "--checkpoint", str(tiny_checkpoint), "--export", str(folder16),
                       "--sizes", "64x48", "--repeats", "1", "--warmup", "0", "--threads", "1",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["backend"], r["output_stride"]) for r in rows] == [("torch", 16),
                                                                 ("onnxruntime", 16)]


def test_the_machine_is_named_with_the_units_that_decide_the_precision(monkeypatch):
    for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(k, raising=False)
    from msaf_core.hardware import cpu_description, isa_summary
    assert isa_summary({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}) == \
        "AVX-512 + AMX (bf16, int8)"
    assert isa_summary({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}) == \
        "AVX-512 (BF16, VNNI), no AMX"
    assert isa_summary({"avx2", "fma"}) == "AVX2 only (no AVX-512, no AMX)"
    text = cpu_description()
    assert "CPUs" in text and any(k in text for k in ("AVX", "AMX")) and "capped" not in text
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_description().endswith("; kernels capped: ONEDNN_MAX_CPU_ISA=AVX2")
