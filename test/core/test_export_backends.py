"""The exported encoder/head pair and the inference-engine backends of the Segmenter.

The tiny checkpoint is exported once (with ``msaf-export --format onnx``); every engine is
compared with the torch Segmenter on real CamVid frames. Engines compute in a different
order than torch, so labels may differ where two classes are within rounding of each other:
the tests ask for 99.9% of the pixels, and compare the logits themselves to 1e-3."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from msaf_core import Segmenter, load_checkpoint
from msaf_core.backends import BackendError, open_engine
from msaf_core.export import (RECORD_NAME, cache_key, cached_export, file_sha256, onnx_to_openvino,
                              read_record)
from msaf_core.model import fold_batchnorm
from msaf_core.tools import export as export_tool

pytest.importorskip("onnx", reason="the ONNX export needs onnx (pip install .[onnxruntime])")
pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript")

CPU_ENGINES = ("onnxruntime", "openvino")
SEC = 1_000_000_000


def engine_available(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def needs(name):
    return pytest.mark.skipif(not engine_available(name),
                              reason=f"{name} is not installed (pip install .[{name}])")


@pytest.fixture(scope="module")
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(old)


def session_cache(tmp_path_factory):
    """One export cache for the test session (test_bench's backends run finds it too)."""
    return tmp_path_factory.getbasetemp() / "msaf_cache"


@pytest.fixture(scope="module")
def onnx_dir(tiny_checkpoint, tmp_path_factory, threads):
    """The tiny checkpoint exported through the command line (ONNX pair and record), into
    the place of the session's export cache."""
    out = session_cache(tmp_path_factory) / "exports" / cache_key(tiny_checkpoint)
    if not (out / RECORD_NAME).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        assert export_tool.main(["--format", "onnx", str(tiny_checkpoint), str(out)]) == 0
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float((a == b).mean())


def stream(seg: Segmenter, frames, name="cam", t0=0):
    return [seg.segment(f, name, stamp_ns=t0 + i * SEC // 10) for i, f in enumerate(frames)]


# -- the export ----------------------------------------------------------------------------------
def test_export_writes_the_pair_and_the_record(onnx_dir, tiny_checkpoint):
    import onnx
    rec = read_record(onnx_dir)
    ck = torch.load(tiny_checkpoint, weights_only=True)
    for key in ("config", "class_names", "palette", "mean", "std", "channel_order"):
        assert rec[key] == ck[key], key
    assert rec["graphs"]["encoder"]["outputs"] == ["x", "f3", "f4"]
    assert rec["graphs"]["head"]["inputs"] == ["x_tm2", "x_tm1", "x", "f3", "f4"]
    enc = onnx.load(str(onnx_dir / "encoder.onnx"))
    (frame,) = enc.graph.input
    dims = frame.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3]
    assert dims[2].dim_param and dims[3].dim_param          # height and width are dynamic
    head = onnx.load(str(onnx_dir / "head.onnx"))
    assert [i.name for i in head.graph.input] == rec["graphs"]["head"]["inputs"]
    assert all(i.type.tensor_type.shape.dim[2].dim_param for i in head.graph.input)


def test_export_refuses_an_existing_output_and_int8_without_openvino(onnx_dir, tiny_checkpoint,
                                                                     tmp_path, capsys):
    assert export_tool.main(["--format", "onnx", str(tiny_checkpoint), str(onnx_dir)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert export_tool.main(["--format", "onnx", "--int8", "data", str(tiny_checkpoint),
                             str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--int8" in err and "--format openvino" in err and "\n" not in err


def test_export_of_a_checkpoint_refuses_output_stride(tmp_path, capsys):
    """A .pt runs at either stride (chosen when it is loaded); --output-stride is for the
    engine graphs, and is refused, not dropped, when writing a checkpoint."""
    assert export_tool.main([str(tmp_path), str(tmp_path / "m.pt"), "--output-stride", "16"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--output-stride" in err and "--format onnx" in err and "\n" not in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in CPU_ENGINES])
def test_engine_logits_equal_the_torch_head(onnx_dir, tiny_checkpoint, val_frames, backend,
                                            threads):
    """Encoder outputs and grid logits of the pair against MSAF.extract / MSAF.head."""
    model, _ = load_checkpoint(tiny_checkpoint)
    assert_engine_equals_torch(open_engine(backend, onnx_dir, threads=threads), model,
                               val_frames[0][:3], grid=(45, 60))


def assert_engine_equals_torch(eng, model, frames, grid):
    """The engine's encoder outputs of the last frame and its grid logits over the three
    ``frames`` equal MSAF.extract / MSAF.head (BatchNorm folded) to 1e-3."""
    fold_batchnorm(model)
    mean = torch.tensor(model.cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.cfg.std).view(1, 3, 1, 1)
    xs = [(torch.tensor(f).permute(2, 0, 1)[None].float() / 255.0 - mean) / std for f in frames]
    with torch.inference_mode():
        ref = [model.extract(x) for x in xs]
        want = model.head(ref[0]["x"], ref[1]["x"], ref[2], None)["out"].permute(0, 2, 3, 1)
    got_feats = [eng.extract(x) for x in xs]
    for k in ("x", "f3", "f4"):
        assert torch.allclose(got_feats[2][k], ref[2][k], atol=1e-3, rtol=1e-3), k
    got = eng.head(dict(got_feats[2], x_tm2=got_feats[0]["x"], x_tm1=got_feats[1]["x"]))
    assert got.shape == want.shape == (1, *grid, model.cfg.num_classes)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in CPU_ENGINES])
def test_engine_labels_match_torch_with_streams_and_resets(onnx_dir, tiny_checkpoint, val_frames,
                                                           backend, threads):
    frames = val_frames[0]
    ref = Segmenter.from_checkpoint(tiny_checkpoint, max_gap_s=1.0)
    seg = Segmenter.from_checkpoint(onnx_dir, backend=backend, max_gap_s=1.0)
    assert seg.backend == backend and seg.model is None
    assert seg.class_names == ref.class_names and np.array_equal(seg.palette, ref.palette)
    assert seg.checkpoint["backend"] == backend
    # two cameras interleaved, then a gap that resets camera a
    for i in range(3):
        for name in ("a", "b"):
            f = frames[i] if name == "a" else frames[5 - i]
            assert agreement(seg.segment(f, name, i * SEC // 10),
                             ref.segment(f, name, i * SEC // 10)) >= 0.999
    assert seg.cache_len("a") == seg.cache_len("b") == 2
    resets = []
    seg.on_reset = lambda s, why: resets.append((s, why))
    late = seg.segment(frames[4], "a", 10 * SEC)
    assert resets == [("a", "gap")] and seg.cache_len("a") == 1
    fresh = Segmenter.from_checkpoint(onnx_dir, backend=backend)
    assert np.array_equal(late, fresh.segment(frames[4], "new", 0))  # a reset = a fresh stream
    # the reference path over the pair equals the stream, frame for frame
    clip = seg.segment_clip(frames[:4])
    streamed = stream(Segmenter.from_checkpoint(onnx_dir, backend=backend), frames[:4])
    assert all(np.array_equal(c, s) for c, s in zip(clip, streamed))
    torch_clip = ref.segment_clip(frames[:4])
    assert min(agreement(c, t) for c, t in zip(clip, torch_clip)) >= 0.999


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in CPU_ENGINES])
def test_engine_confidence_matches_torch(onnx_dir, tiny_checkpoint, val_frames, backend,
                                         threads):
    """The confidence map comes from the engine's logits as it does from torch's."""
    ref = Segmenter.from_checkpoint(tiny_checkpoint)
    seg = Segmenter.from_checkpoint(onnx_dir, backend=backend)
    for i, f in enumerate(val_frames[0][:3]):
        labels, conf = seg.segment(f, "c", i * SEC // 10, confidence=True)
        ref_labels, ref_conf = ref.segment(f, "c", i * SEC // 10, confidence=True)
        assert conf.shape == ref_conf.shape == f.shape[:2] and conf.dtype == np.uint8
        assert agreement(labels, ref_labels) >= 0.999
        assert np.abs(conf.astype(int) - ref_conf.astype(int)).max() <= 1


@needs("onnxruntime")
def test_onnxruntime_threads_do_not_spin_after_a_run(onnx_dir, threads):
    """torch's upsampling and argmax run right after each head run on the same cores: ORT's
    spin-waiting threads would take CPU from them."""
    eng = open_engine("onnxruntime", onnx_dir, threads=threads)
    for sess in (eng.enc, eng.hd):
        opts = sess.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@needs("openvino")
def test_openvino_ir_export_and_odd_sizes(onnx_dir, tiny_checkpoint, val_frames, tmp_path,
                                          threads):
    ir = tmp_path / "ir"
    shutil.copytree(onnx_dir, ir)
    rec = read_record(ir)
    rec["graphs"] = onnx_to_openvino(ir, rec["graphs"])
    (ir / RECORD_NAME).write_text(json.dumps(rec))
    assert rec["graphs"]["encoder"]["file"] == "encoder.xml"
    assert (ir / "encoder.bin").is_file() and (ir / "head.xml").is_file()
    seg = Segmenter.from_checkpoint(ir, backend="openvino")
    ref = Segmenter.from_checkpoint(tiny_checkpoint)
    odd = [f[:97, :131].copy() for f in val_frames[0][:3]]     # dynamic sizes, odd ones
    assert min(agreement(a, b) for a, b in zip(stream(seg, odd), stream(ref, odd))) >= 0.999
    # the IR folder keeps its ONNX pair for engines that read ONNX only
    if engine_available("onnxruntime"):
        Segmenter.from_checkpoint(ir, backend="onnxruntime")
        for part in ("encoder", "head"):
            del rec["graphs"][f"{part}_onnx"]
        (ir / RECORD_NAME).write_text(json.dumps(rec))
        with pytest.raises(BackendError, match=r"export with msaf-export --format onnx"):
            Segmenter.from_checkpoint(ir, backend="onnxruntime")


def test_a_checkpoint_is_exported_once_into_the_cache(onnx_dir, tiny_checkpoint,
                                                      tmp_path_factory):
    """The cache is keyed by the checkpoint's hash: a later load finds the export there."""
    stamp = (onnx_dir / RECORD_NAME).stat().st_mtime_ns
    folder = cached_export(tiny_checkpoint, session_cache(tmp_path_factory))
    assert folder == onnx_dir and (folder / RECORD_NAME).stat().st_mtime_ns == stamp
    assert read_record(folder)["source_sha256"] == file_sha256(tiny_checkpoint)


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,extra", [("onnxruntime", ".[onnxruntime]"),
                                           ("openvino", ".[openvino]")])
def test_a_missing_backend_is_one_line_naming_the_extra(monkeypatch, tiny_checkpoint, backend,
                                                        extra):
    monkeypatch.setitem(sys.modules, backend, None)   # import fails as if not installed
    with pytest.raises(BackendError) as e:
        Segmenter.from_checkpoint(tiny_checkpoint, backend=backend)
    msg = str(e.value)
    assert "\n" not in msg and f"backend '{backend}' is not installed" in msg
    assert f"pip install {extra}" in msg
    assert isinstance(e.value, ValueError)    # the programs' one-line error path


def test_tensorrt_without_a_gpu_or_package_says_so(tiny_checkpoint):
    if engine_available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT and a CUDA GPU are here: the GPU path is measured, not refused")
    with pytest.raises(BackendError, match=r"tensorrt|CUDA") as e:
        Segmenter.from_checkpoint(tiny_checkpoint, backend="tensorrt")
    assert "\n" not in str(e.value)


def test_tensorrt_build_bakes_the_output_stride(tiny_checkpoint, onnx_dir, tmp_path,
                                                 monkeypatch, threads):
    """``msaf-export --format tensorrt --output-stride 16``: the ONNX pair it builds from is
    exported at 16 and the optimisation profile's feature grids are 1/16 ones; a folder
    made at another stride is refused, naming the fix. TensorRT itself is stood in for
    (it needs a GPU): what is checked is what reaches the engine builder."""
    from msaf_core import tensorrt_engine as trt_mod
    built = []

    def fake_build(trt, onnx_path, fp16, stride=8):
        built.append((onnx_path.name, fp16, stride))
        return b"plan"

    monkeypatch.setattr(trt_mod, "import_backend",
                        lambda name: type("FakeTRT", (), {"__version__": "0"}))
    monkeypatch.setattr(trt_mod, "_build", fake_build)
    out = tmp_path / "trt16"
    assert export_tool.main(["--format", "tensorrt", "--output-stride", "16",
                             str(tiny_checkpoint), str(out)]) == 0
    rec = read_record(out)
    assert rec["config"]["output_stride"] == 16
    assert built == [("encoder.onnx", True, 16), ("head.onnx", True, 16)]
    assert {"encoder_trt_fp16", "head_trt_fp16"} <= set(rec["graphs"])
    assert trt_mod._grid((512, 1024), 16) == (32, 64) and trt_mod._grid((360, 480), 16) == (23, 30)
    # an ONNX folder made at 8, asked for 16: refused with the fix, nothing built
    built.clear()
    with pytest.raises(BackendError, match=r"output stride 8.*--output-stride 16") as e:
        trt_mod.build_engines(onnx_dir, tmp_path / "trt_refused", output_stride=16)
    assert "\n" not in str(e.value) and not built
    # the same folder at its own stride builds
    trt_mod.build_engines(onnx_dir, tmp_path / "trt8", fp16=False, output_stride=8)
    assert built == [("encoder.onnx", False, 8), ("head.onnx", False, 8)]


def test_backend_argument_errors(tiny_checkpoint, onnx_dir, tmp_path):
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        Segmenter.from_checkpoint(tiny_checkpoint, backend="tflite")
    # a folder given as the checkpoint is a checkpoint problem (the node names the
    # checkpoint parameter), with the hint that engines run export folders
    from msaf_core.errors import CheckpointNotFoundError
    with pytest.raises(CheckpointNotFoundError, match="not a regular file but a folder.*openvino"):
        Segmenter.from_checkpoint(onnx_dir)
    with pytest.raises(BackendError, match="int8 runs on"):
        Segmenter.from_checkpoint(tiny_checkpoint, int8=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="not an msaf export folder"):
        Segmenter.from_checkpoint(tmp_path / "empty", backend="onnxruntime")
    if engine_available("openvino"):
        with pytest.raises(BackendError, match="no int8 graphs"):
            Segmenter.from_checkpoint(onnx_dir, backend="openvino", int8=True)
    if engine_available("onnxruntime"):
        with pytest.raises(BackendError, match="runs fp32, not bf16"):
            Segmenter.from_checkpoint(onnx_dir, backend="onnxruntime", bf16=True)


@needs("onnxruntime")
def test_eval_runs_on_an_engine(onnx_dir, camvid_root, tmp_path, capsys, threads):
    from msaf_core.tools import evaluate
    out = tmp_path / "e.json"
    assert evaluate.main(["--data-root", str(camvid_root), "--split", "val", "--checkpoint",
                          str(onnx_dir), "--backend", "onnxruntime", "--max-frames", "2",
                          "--no-tc", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["backend"] == "onnxruntime" and res["frames"] == 2 and 0 <= res["miou"] <= 1
    assert "onnxruntime fp32" in capsys.readouterr().out


@needs("openvino")
def test_int8_quantisation_adds_quantised_graphs_that_stream(onnx_dir, val_frames, tmp_path,
                                                             threads):
    """NNCF int8 on two real clips (the command calibrates on training clips): quantised
    graphs join the record and stream like the fp32 ones. A random tiny model is all near
    ties, so its int8 labels say nothing about accuracy; the bundled model's int8 score is
    measured in docs/benchmarks.md."""
    pytest.importorskip("nncf", reason="int8 quantisation needs nncf (pip install .[int8])")
    import openvino as ov

    from msaf_core.export import quantize_openvino
    q = tmp_path / "q"
    shutil.copytree(onnx_dir, q)
    frames = val_frames[0]
    rec = quantize_openvino(q, [frames[0:3], frames[3:6]], threads=threads)
    assert rec["int8_calibration"]["clips"] == 2
    core = ov.Core()
    for part in ("encoder", "head"):
        ops = {o.get_type_name() for o in core.read_model(
            str(q / rec["graphs"][f"{part}_int8"]["file"])).get_ops()}
        assert "FakeQuantize" in ops, part                   # int8 where NNCF put it
        fp32 = {o.get_type_name() for o in core.read_model(
            str(q / rec["graphs"][part]["file"])).get_ops()}
        assert "FakeQuantize" not in fp32
    seg = Segmenter.from_checkpoint(q, backend="openvino", int8=True)
    got = stream(seg, frames[:3])
    assert all(g.shape == (360, 480) and g.max() < seg.cfg.num_classes for g in got)
    assert seg.cache_len("cam") == 2


# -- output stride 16 ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in CPU_ENGINES])
def test_output_stride_16_is_exported_cached_and_run_like_torch(tiny_checkpoint, onnx_dir,
                                                                val_frames, tmp_path_factory,
                                                                backend, threads):
    """A checkpoint run at output stride 16 on an engine: its own cached export (the
    record says 16; the stride-8 folder is not reused), logits on the 1/16 grid equal to
    torch's at 16, labels matching torch's Segmenter at 16; an export folder made at 8
    is refused for 16, naming the fix."""
    cache = session_cache(tmp_path_factory)
    folder = cached_export(tiny_checkpoint, cache, output_stride=16)
    assert folder != onnx_dir and read_record(folder)["config"]["output_stride"] == 16
    assert cached_export(tiny_checkpoint, cache, output_stride=8) == onnx_dir
    model, _ = load_checkpoint(tiny_checkpoint, output_stride=16)
    assert_engine_equals_torch(open_engine(backend, folder, threads=threads), model,
                               val_frames[0][:3], grid=(23, 30))
    ref_seg = Segmenter.from_checkpoint(tiny_checkpoint, output_stride=16, max_gap_s=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSAF_CACHE_DIR", str(cache))
        seg = Segmenter.from_checkpoint(tiny_checkpoint, backend=backend, output_stride=16,
                                        max_gap_s=None)
        assert seg.engine.dir == folder
        with pytest.raises(BackendError, match=r"exported at output stride 8, not 16.*"
                                               r"msaf-export --output-stride 16"):
            Segmenter.from_checkpoint(onnx_dir, backend=backend, output_stride=16)
    frames = val_frames[0][:4]
    for a, b in zip(stream(ref_seg, frames), stream(seg, frames)):
        assert agreement(a, b) > 0.995


def test_export_command_bakes_the_output_stride(tiny_checkpoint, tmp_path):
    out = tmp_path / "os16"
    assert export_tool.main(["--format", "onnx", "--output-stride", "16", str(tiny_checkpoint),
                             str(out)]) == 0
    assert read_record(out)["config"]["output_stride"] == 16
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        Segmenter.from_checkpoint(tiny_checkpoint, output_stride=12)
