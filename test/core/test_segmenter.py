"""Streaming Segmenter: cache equals the reference path, one backbone pass, resets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msaf_core import InputError, Segmenter

from conftest import make_tiny_model

MS = 1_000_000


@pytest.fixture()
def frames():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (56, 72, 3), dtype=np.uint8)
    # a moving pattern so consecutive frames differ but are related
    return [np.roll(base, 3 * i, axis=1) for i in range(6)]


def _count_backbone(model):
    calls = {"n": 0}
    model.backbone.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_stream_equals_reference_over_six_frames(frames):
    seg = Segmenter(make_tiny_model())
    streamed = [seg.segment(f, stamp_ns=i * 66 * MS) for i, f in enumerate(frames)]
    ref = seg.segment_clip(frames)
    for a, b in zip(streamed, ref):
        assert a.dtype == np.uint8 and a.shape == frames[0].shape[:2]
        np.testing.assert_array_equal(a, b)


def test_stream_with_resets_equals_reference(frames):
    seg = Segmenter(make_tiny_model(), max_gap_s=0.5)
    reasons = []
    seg.on_reset = lambda stream, reason: reasons.append(reason)
    stamps = [0, 66, 132, 100, 166, 2000]  # backwards at 3, gap at 5
    out = [seg.segment(f, stamp_ns=s * MS) for f, s in zip(frames, stamps)]
    assert reasons == ["time-backwards", "gap"]
    ref = seg.segment_clip(frames[:3]) + seg.segment_clip(frames[3:5]) + seg.segment_clip(frames[5:])
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)


def test_gap_counts_from_observed_skipped_frames(frames):
    seg = Segmenter(make_tiny_model(), max_gap_s=0.5)
    reasons = []
    seg.on_reset = lambda s, r: reasons.append(r)
    seg.segment(frames[0], stamp_ns=0)
    for t in range(100, 2000, 100):  # a slow model: frames arrive every 0.1 s, are skipped
        seg.observe("default", t * MS)
    seg.segment(frames[1], stamp_ns=2000 * MS)  # 2 s after the last segmented frame
    assert reasons == [] and seg.cache_len() == 2
    seg.segment(frames[2], stamp_ns=3000 * MS)  # nothing arrived for 1 s: a real gap
    assert reasons == ["gap"] and seg.cache_len() == 1
    seg.observe("default", 100 * MS)  # an old stamp neither resets nor bridges anything
    seg.segment(frames[3], stamp_ns=3100 * MS)
    assert reasons == ["gap"]


def test_manual_reset_and_duplicate_stamp(frames):
    seg = Segmenter(make_tiny_model())
    reasons = []
    seg.on_reset = lambda s, r: reasons.append(r)
    seg.segment(frames[0], stamp_ns=10)
    seg.segment(frames[1], stamp_ns=20)
    assert seg.cache_len() == 2
    seg.segment(frames[2], stamp_ns=20)
    assert reasons == ["duplicate-stamp"] and seg.cache_len() == 1
    seg.reset()
    assert seg.cache_len() == 0
    a = seg.segment(frames[3], stamp_ns=30)
    np.testing.assert_array_equal(a, seg.segment_clip([frames[3]])[0])


def test_resolution_change_resets(frames):
    seg = Segmenter(make_tiny_model())
    reasons = []
    seg.on_reset = lambda s, r: reasons.append(r)
    seg.segment(frames[0])
    seg.segment(frames[1])
    small = frames[2][:40, :48].copy()
    out = seg.segment(small)
    assert reasons == ["resolution"] and out.shape == (40, 48)
    np.testing.assert_array_equal(out, seg.segment_clip([small])[0])


def test_one_backbone_pass_per_streamed_frame(frames):
    model = make_tiny_model()
    calls = _count_backbone(model)
    seg = Segmenter(model)
    for i, f in enumerate(frames):
        seg.segment(f, stamp_ns=i * 66 * MS)
        assert calls["n"] == i + 1
    calls["n"] = 0
    seg.segment_clip(frames[:2])
    assert calls["n"] == 6  # the reference path runs three passes per frame


def test_streams_are_independent(frames):
    seg = Segmenter(make_tiny_model())
    a = [seg.segment(f, stream="left", stamp_ns=i) for i, f in enumerate(frames[:3])]
    b = seg.segment(frames[5], stream="right", stamp_ns=1)
    np.testing.assert_array_equal(b, seg.segment_clip([frames[5]])[0])
    assert seg.cache_len("left") == 2 and seg.cache_len("right") == 1
    np.testing.assert_array_equal(a[2], seg.segment_clip(frames[:3])[2])
    assert sorted(seg.streams) == ["left", "right"]


def test_stream_count_is_bounded(frames):
    seg = Segmenter(make_tiny_model(), max_streams=2)
    for name in ("a", "b", "c"):
        seg.segment(frames[0], stream=name)
    assert seg.streams == ["b", "c"]


def test_cache_not_in_state_dict_and_follows_dtype(frames):
    model = make_tiny_model()
    keys = set(model.state_dict())
    seg = Segmenter(model, fold_bn=False)  # folding changes the keys on purpose
    seg.segment(frames[0])
    seg.segment(frames[1])
    assert set(model.state_dict()) == keys
    assert not any("cache" in k for k in keys)
    model.double()  # the cache must follow the model's dtype
    seg._mean, seg._std = seg._mean.double(), seg._std.double()
    out = seg.segment(frames[2])
    assert out.shape == frames[2].shape[:2]


def test_bf16_autocast_stream_equals_reference(frames):
    seg = Segmenter(make_tiny_model(), bf16=True)
    out = [seg.segment(f, stamp_ns=i) for i, f in enumerate(frames[:3])]
    for a, b in zip(out, seg.segment_clip(frames[:3])):
        np.testing.assert_array_equal(a, b)


def test_inference_size_returns_input_resolution(frames):
    seg = Segmenter(make_tiny_model(), size=(32, 40))
    out = seg.segment(frames[0])
    assert out.shape == frames[0].shape[:2]
    np.testing.assert_array_equal(seg.segment_clip(frames[:1])[0], out)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4, 3), np.uint8), np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.float32),
    np.zeros((32, 32, 4), np.uint8), [[1, 2, 3]]])
def test_bad_images_raise_input_error(bad):
    seg = Segmenter(make_tiny_model())
    with pytest.raises(InputError):
        seg.segment(bad)
    assert seg.cache_len() == 0


def test_bad_device_and_options():
    m = make_tiny_model()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Segmenter(m, "cuda")
        with pytest.raises(ValueError, match="half precision needs a CUDA device"):
            Segmenter(m, "cpu", half=True)
    with pytest.raises(ValueError, match="invalid device"):
        Segmenter(m, "gpu0")
    with pytest.raises(ValueError, match="max_gap_s"):
        Segmenter(m, max_gap_s=0)


def test_colorize_and_overlay(frames):
    seg = Segmenter(make_tiny_model())
    labels = np.array([[0, 3], [10, 200]], np.uint8)
    col = seg.colorize(labels)
    assert col.shape == (2, 2, 3)
    assert tuple(col[0, 1]) == (128, 64, 128) and tuple(col[1, 1]) == (0, 0, 0)
    img = np.full((2, 2, 3), 200, np.uint8)
    ov = seg.overlay(img, labels, alpha=0.0)
    np.testing.assert_array_equal(ov, img)
    np.testing.assert_array_equal(seg.overlay(img, labels, alpha=1.0), col)


def test_real_frames_stream_equals_reference(val_frames):
    frames, _ = val_frames
    seg = Segmenter(make_tiny_model())
    out = [seg.segment(f, stamp_ns=i * 66 * MS) for i, f in enumerate(frames[:4])]
    ref = seg.segment_clip(frames[:4])
    for a, b in zip(out, ref):
        assert a.shape == (360, 480)
        np.testing.assert_array_equal(a, b)


def test_segmenter_folds_batchnorm_with_the_same_labels(frames):
    """The Segmenter folds BatchNorm into the convolutions by default (faster, same network);
    its labels agree with an unfolded Segmenter's (float32 rounding may flip a rare tie)."""
    import copy
    model = make_tiny_model()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    plain = Segmenter(copy.deepcopy(model), fold_bn=False)
    folded = Segmenter(model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    for i, f in enumerate(frames):
        a = plain.segment(f, stamp_ns=i * 66 * MS)
        b = folded.segment(f, stamp_ns=i * 66 * MS)
        assert (a == b).mean() >= 0.999


def test_export_paths_compute_what_the_inference_loops_compute(monkeypatch):
    """While exporting, the CPU inference loops (attention in query chunks, per-pixel blocks in
    pixel chunks, the deformable convolution in row blocks) give way to whole-tensor forms
    with dynamic sizes, and the head can stop at the 1/8 grid. Same values (float64), on a
    grid large enough for every chunked path to take several chunks."""
    import torch.nn.functional as F

    import msaf_core.model as msaf_model
    model = make_tiny_model().double()
    monkeypatch.setattr(msaf_model, "INFER_CHUNK", 64)
    monkeypatch.setattr(msaf_model, "DCN_CHUNK", 32)
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 96, 128, generator=g, dtype=torch.float64) for _ in range(3)]
    with torch.inference_mode():
        feats = [model.extract(f) for f in frames]
        chunked = model.head(feats[0]["x"], feats[1]["x"], feats[2], (96, 128))["out"]
        monkeypatch.setattr(msaf_model, "exporting", lambda: True)
        grid = model.head(feats[0]["x"], feats[1]["x"], feats[2], None)["out"]
        whole = F.interpolate(grid, size=(96, 128), mode="bilinear", align_corners=False)
    assert grid.shape == (1, model.cfg.num_classes, 12, 16)
    torch.testing.assert_close(whole, chunked, rtol=1e-9, atol=1e-9)


def test_confidence_is_the_winning_softmax_of_the_same_logits(frames):
    """segment(confidence=True) gives the same labels and, per pixel, round(255 x the
    softmax probability of the winning class), from the full-resolution logits."""
    model = make_tiny_model()
    seg = Segmenter(model, max_gap_s=None)
    plain = Segmenter(make_tiny_model(), max_gap_s=None)
    for i, f in enumerate(frames[:4]):
        labels, conf = seg.segment(f, "c", i * 66 * MS, confidence=True)
        assert conf.dtype == np.uint8 and conf.shape == f.shape[:2]
        np.testing.assert_array_equal(labels, plain.segment(f, "c", i * 66 * MS))
    # the reference: the full forward over the last three frames, softmax over classes
    x = torch.stack([seg._prep(f)[0] for f in frames[1:4]])[None]
    with torch.inference_mode():
        logits = seg.model(x, out_size=frames[0].shape[:2])["out"][0].float()
    prob = torch.softmax(logits, 0)
    want = (prob.max(0).values * 255).round().to(torch.uint8).numpy()
    assert np.abs(conf.astype(int) - want.astype(int)).max() <= 1
    k = seg.cfg.num_classes
    assert conf.min() >= int(255 / k) and conf.max() <= 255


def test_winning_probability_edge_cases():
    from msaf_core.segmenter import winning_probability
    flat = torch.zeros(4, 2, 3)                         # all classes alike: 1/K
    assert (winning_probability(flat, flat.argmax(0)) == round(255 / 4)).all()
    sure = torch.full((4, 2, 3), -50.0)
    sure[2] = 50.0                                      # one class far ahead: 255
    assert (winning_probability(sure, sure.argmax(0)) == 255).all()
    half = torch.tensor([[[0.0]], [[0.0]], [[-1e4]]], dtype=torch.bfloat16)
    assert winning_probability(half, half.argmax(0)).item() == 128   # a tie of two
