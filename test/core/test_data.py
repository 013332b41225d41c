"""Clip sampling and shared augmentation on real CamVid frames; the Cityscapes layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msaf_core.data import (IGNORE, CamVidClips, ClipAugment, CityscapesClips,
                            median_frequency_weights)


def test_camvid_clip_sampling(camvid_root):
    ds = CamVidClips(camvid_root, "train")
    assert len(ds) == 367
    seqs = ds.sequences()
    assert sum(len(s) for s in seqs) == 367
    # 0016E5 in train has two large jumps, so it splits into three sequences
    assert len(seqs) == 5
    for seq in seqs:
        first = ds.items[seq[0]][0]
        assert first[0] == first[1] == first[2]  # (t, t, t) at a sequence start
        second = ds.items[seq[1]][0]
        assert second[0] == second[2] and second[1] == first[2]  # (t, t-1, t)
        for k in range(2, len(seq)):  # (t-2, t-1, t) are the previous labelled frames
            clip = ds.items[seq[k]][0]
            assert clip[0] == ds.items[seq[k - 2]][0][2] and clip[1] == ds.items[seq[k - 1]][0][2]
    # t-1 of 0001TP_006750 is 0001TP_006720, its t-2 is 0001TP_006690
    i = next(i for i, it in enumerate(ds.items) if it[2] == "0001TP_006750")
    assert [p.stem for p in ds.items[i][0]] == ["0001TP_006690", "0001TP_006720", "0001TP_006750"]


def test_camvid_val_is_one_video_rate_sequence(camvid_root):
    ds = CamVidClips(camvid_root, "val")
    seqs = ds.sequences()
    assert len(seqs) == 1 and len(seqs[0]) == 101 and ds.video_rate(seqs[0])
    tr = CamVidClips(camvid_root, "train")
    assert not any(tr.video_rate(s) for s in tr.sequences())


def test_void_maps_to_ignore(camvid_root):
    ds = CamVidClips(camvid_root, "val")
    frames, lab = ds.raw(0)
    raw = np.asarray(Image.open(camvid_root / "valannot" / f"{ds.items[0][2]}.png"))
    assert ((raw == 11) == (lab == IGNORE)).all()
    assert lab[lab != IGNORE].max() <= 10
    assert len(frames) == 3 and frames[0].shape == (360, 480, 3)


def test_shared_geometric_augmentation_on_real_frames(camvid_root):
    """Identical frames stay identical under geometry; photometric jitter differs per frame."""
    ds = CamVidClips(camvid_root, "train", ClipAugment(crop=(128, 160), scale=(0.5, 1.5), flip=True),
                     seed=3)
    i = next(i for i, it in enumerate(ds.items) if len(set(it[0])) == 1)  # a (t, t, t) clip
    for epoch in range(4):
        ds.set_epoch(epoch)
        s = ds[i]
        f, y = s["frames"], s["label"]
        assert f.shape == (3, 3, 128, 160) and y.shape == (128, 160)
        assert torch.equal(f[0], f[2]) and torch.equal(f[1], f[2])
        assert set(torch.unique(y).tolist()) <= set(range(11)) | {IGNORE}
    # the label follows frame t's crop and flip exactly
    aug = ClipAugment(crop=(100, 100), scale=(1.0, 1.0), flip=True)
    x = torch.rand(3, 3, 360, 480)
    x[2, 0] = torch.arange(480).float().div(480)  # a ramp marks position and flip in frame t
    lab = torch.arange(480).repeat(360, 1) % 11
    fx, fy = aug(x, lab, torch.Generator().manual_seed(5))
    col = fx[2, 0, 0]
    # the label's column index (mod 11) and the image ramp come from the same crop/flip
    src_cols = torch.round(col * 480).long()
    assert torch.equal(fy[0] % 11, src_cols % 11)


def test_photometric_jitter_differs_per_frame():
    aug = ClipAugment(crop=None, scale=(1.0, 1.0), flip=False, jitter=0.3)
    x = torch.rand(1, 3, 20, 20).repeat(3, 1, 1, 1)
    fx, _ = aug(x, torch.zeros(20, 20, dtype=torch.long), torch.Generator().manual_seed(0))
    assert not torch.allclose(fx[0], fx[1])


def test_crop_padding_is_ignored():
    aug = ClipAugment(crop=(64, 64), scale=(1.0, 1.0), flip=False)
    fx, fy = aug(torch.rand(3, 3, 40, 50), torch.zeros(40, 50, dtype=torch.long),
                 torch.Generator().manual_seed(0))
    assert fx.shape == (3, 3, 64, 64)
    assert (fy[40:] == IGNORE).all() and (fy[:, 50:] == IGNORE).all() and (fy[:40, :50] == 0).all()


def test_median_frequency_weights():
    w = median_frequency_weights(np.array([100, 10, 1, 0]))
    # median of the present classes' frequencies is that of class 1
    assert w[1] == pytest.approx(1.0) and w[0] == pytest.approx(0.1) and w[2] == pytest.approx(10)
    assert w[3] == 0


def _write_cityscapes(root: Path, split="val"):
    """A tiny fixture in the official Cityscapes layout: 2 cities, 3 labelled frames."""
    rng = np.random.default_rng(0)
    items = [("aachen", "000000", 19), ("aachen", "000001", 19), ("bochum", "000002", 19)]
    for city, seq, frame in items:
        for sub in ("leftImg8bit", "gtFine", "leftImg8bit_sequence"):
            (root / sub / split / city).mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "leftImg8bit" / split / city /
                                  f"{city}_{seq}_{frame:06d}_leftImg8bit.png")
        for k in (0, 1, 2):
            Image.fromarray(np.roll(img, k, 1)).save(
                root / "leftImg8bit_sequence" / split / city /
                f"{city}_{seq}_{frame - k:06d}_leftImg8bit.png")
        lab = np.zeros((32, 64), np.uint8)
        lab[:, :16] = 7   # road → 0
        lab[:, 16:32] = 26  # car → 13
        lab[:, 32:48] = 4   # static → ignore
        lab[:, 48:] = 33  # bicycle → 18
        Image.fromarray(lab).save(root / "gtFine" / split / city /
                                  f"{city}_{seq}_{frame:06d}_gtFine_labelIds.png")
    return items


def test_cityscapes_fixture(tmp_path):
    items = _write_cityscapes(tmp_path)
    ds = CityscapesClips(tmp_path, "val", ClipAugment(crop=(32, 32), flip=False))
    assert len(ds) == len(items) and ds.num_classes == 19
    paths = ds.items[0][0]
    assert [p.name for p in paths] == [f"aachen_000000_{f:06d}_leftImg8bit.png" for f in (17, 18)] + \
        ["aachen_000000_000019_leftImg8bit.png"]
    assert paths[0].parent.parent.parent.name == "leftImg8bit_sequence"
    _, lab = ds.raw(0)
    assert lab[0, 0] == 0 and lab[0, 20] == 13 and lab[0, 40] == IGNORE and lab[0, 60] == 18
    s = ds[1]
    assert s["frames"].shape == (3, 3, 32, 32)
    assert ds.sequences() == [[0], [1], [2]] and ds.video_rate([0])
    with pytest.raises(FileNotFoundError, match="Cityscapes folder not found"):
        CityscapesClips(tmp_path, "train")


def test_cityscapes_missing_sequence_frame(tmp_path):
    _write_cityscapes(tmp_path)
    next((tmp_path / "leftImg8bit_sequence" / "val" / "bochum").glob("*000017*")).unlink()
    with pytest.raises(FileNotFoundError, match="sequence frame missing"):
        CityscapesClips(tmp_path, "val")


def test_frame_cache_is_bounded(camvid_root):
    """Decoded frames are cached up to cache_mb per process (Cityscapes' 56 GB of frames
    would not fit); beyond the bound frames are decoded each time, with the same pixels."""
    one = 480 * 360 * 3
    ds = CamVidClips(camvid_root, "val", cache_mb=2.5 * one / 2**20)   # room for two frames
    frames = [p for p in dict.fromkeys(p for it in ds.items[:6] for p in it[0])][:4]
    first = [ds._img(p) for p in frames]
    assert len(ds._cache) == 2 and all(p in ds._cache for p in frames[:2])
    again = [ds._img(p) for p in frames]
    assert again[0] is first[0] and again[3] is not first[3]          # cached / decoded anew
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert CamVidClips(camvid_root, "val", cache=False)._cache is None


def test_camvid_select_exclude_and_joined_splits(camvid_root):
    train = CamVidClips(camvid_root, "train")
    drives = sorted(set(train.sequence_names()))
    assert drives == ["0001TP", "0006R0", "0016E5"]
    only = CamVidClips(camvid_root, "train", sequences=["0006R0"])
    assert set(only.sequence_names()) == {"0006R0"}
    assert all(it[2].startswith("0006R0_") for it in only.items)
    rest = CamVidClips(camvid_root, "train", exclude=["0006R0"])
    assert len(only) + len(rest) == len(train) == 367
    assert not any(it[2].startswith("0006R0_") for it in rest.items)
    # train+val: every labelled frame; each split keeps its own sequences (val's frames
    # never take a train frame as their t-1)
    both = CamVidClips(camvid_root, "train+val")
    assert len(both) == 367 + 101
    val_seqs = [s for s in both.sequences() if both.items[s[0]][0][2].parent.name == "val"]
    assert len(val_seqs) == 1 and len(val_seqs[0]) == 101
    assert all(p.parent.name == "val" for i in val_seqs[0] for p in both.items[i][0])
    with pytest.raises(ValueError, match="no sequence named 0007XX .*it has 0001TP, 0006R0, 0016E5\\)"):
        CamVidClips(camvid_root, "train", exclude=["0007XX"])
    with pytest.raises(ValueError, match="no frames left"):
        CamVidClips(camvid_root, "val", exclude=["0016E5"])


@pytest.mark.parametrize("opt", [dict(gamma=0.4), dict(colour=0.1), dict(blur=1.0),
                                 dict(noise=0.05)])
def test_each_photometric_change_acts_and_keeps_the_range(opt):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 24).repeat(3, 1, 1, 1)
    lab = torch.zeros(24, 24, dtype=torch.long)
    aug = ClipAugment(crop=None, scale=(1.0, 1.0), flip=False, **opt)
    fx, fy = aug(x, lab, torch.Generator().manual_seed(1))
    assert fx.shape == x.shape and torch.equal(fy, lab)
    assert float(fx.min()) >= 0.0 and float(fx.max()) <= 1.0
    assert not torch.allclose(fx, x, atol=1e-3)
    again, _ = aug(x, lab, torch.Generator().manual_seed(1))
    assert torch.equal(fx, again)                          # reproducible from the generator
    if "blur" not in opt:                                  # per-frame drift or noise
        assert not torch.allclose(fx[0], fx[1], atol=1e-4)


def test_clip_light_is_shared_and_frames_drift_a_little():
    """The clip's light is drawn once: frames of one clip differ far less from each other
    than from the same frames under another clip's light."""
    x = torch.rand(1, 3, 32, 32).repeat(3, 1, 1, 1)
    lab = torch.zeros(32, 32, dtype=torch.long)
    aug = ClipAugment(crop=None, scale=(1.0, 1.0), flip=False, jitter=0.3, gamma=0.4, colour=0.1)
    within, across = [], []
    for s in range(20):
        a, _ = aug(x, lab, torch.Generator().manual_seed(2 * s))
        b, _ = aug(x, lab, torch.Generator().manual_seed(2 * s + 1))
        within.append(float((a[0] - a[1]).abs().mean()))
        across.append(float((a[0] - b[0]).abs().mean()))
    assert np.mean(within) < 0.5 * np.mean(across)


def test_gaussian_blur_keeps_constants_and_mass():
    from msaf_core.data import gaussian_blur
    flat = torch.full((3, 10, 12), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.2), flat, atol=1e-6)
    spot = torch.zeros(1, 21, 21)
    spot[0, 10, 10] = 1.0
    out = gaussian_blur(spot, 1.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5) and out[0, 10, 10] < 0.2
    assert torch.allclose(out[0], out[0].T, atol=1e-7)     # separable and symmetric
