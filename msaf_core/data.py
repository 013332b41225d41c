"""Video clip datasets (CamVid, Cityscapes) and the shared clip augmentation.

A sample is a clip of three frames (t-2, t-1, t) and the label map of frame t. Where a frame
has fewer than two predecessors in its sequence, frame t stands in for each missing one,
the same rule the streaming :class:`~msaf_core.Segmenter` applies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .config import CAMVID_CLASSES, CITYSCAPES_CLASSES, IMAGENET_MEAN, IMAGENET_STD

IGNORE = 255


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_label(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# -------------------------------------------------------------------------------------------
# Augmentation
# -------------------------------------------------------------------------------------------
@dataclass
class ClipAugment:
    """Geometry shared by all frames of a clip; photometric changes drawn per frame.

    ``crop``: (h, w) output size, or None for no crop (then no padding either).
    ``scale``: range of the random resize factor. Areas padded by the crop get label IGNORE.

    Photometric (all off at 0): the light of the clip is drawn once (brightness, contrast,
    saturation factors in [1-jitter, 1+jitter], gamma in [e^-gamma, e^gamma], a per-channel
    white-balance gain in [1-colour, 1+colour], a Gaussian blur with probability ``blur``);
    each frame then varies around it by a quarter of those ranges (exposure and white balance
    drift between frames) and gets its own sensor noise of standard deviation up to ``noise``.
    """

    crop: Optional[Tuple[int, int]] = None
    scale: Tuple[float, float] = (1.0, 1.0)
    flip: bool = True
    jitter: float = 0.0  # brightness/contrast/saturation strength
    gamma: float = 0.0   # log-range of the gamma curve
    colour: float = 0.0  # per-channel gain range (white balance, colour cast)
    blur: float = 0.0    # probability of a Gaussian blur of sigma 0.4..1.5 px (per clip)
    noise: float = 0.0   # largest standard deviation of additive Gaussian noise (per frame)

    def __call__(self, frames: torch.Tensor, label: torch.Tensor,
                 g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """frames (T, 3, H, W) float in [0,1], label (H, W) int64 → augmented copies."""
        t, _, h, w = frames.shape
        s = float(torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g))
        if abs(s - 1.0) > 1e-6:
            nh, nw = max(8, int(round(h * s))), max(8, int(round(w * s)))
            frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False,
                                   antialias=s < 1)
            label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
            h, w = nh, nw
        if self.crop is not None:
            ch, cw = self.crop
            ph, pw = max(0, ch - h), max(0, cw - w)
            if ph or pw:
                frames = F.pad(frames, (0, pw, 0, ph), value=0.0)
                label = F.pad(label, (0, pw, 0, ph), value=IGNORE)
                h, w = h + ph, w + pw
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            frames = frames[:, :, y0:y0 + ch, x0:x0 + cw]
            label = label[y0:y0 + ch, x0:x0 + cw]
        if self.flip and bool(torch.rand(1, generator=g) < 0.5):
            frames, label = frames.flip(-1), label.flip(-1)
        if self.jitter or self.gamma or self.colour or self.blur or self.noise:
            frames = self._photometric(frames, g)
        return frames.contiguous(), label.contiguous()

    def _photometric(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        def u(n: int = 1) -> torch.Tensor:  # uniform in [-1, 1]
            return 2 * torch.rand(n, generator=g) - 1
        bcs = 1 + self.jitter * u(3)                     # the clip's light
        gamma = float(self.gamma * u())
        gain = 1 + self.colour * u(3)
        sigma = float(0.4 + 1.1 * torch.rand(1, generator=g)) if (
            self.blur and bool(torch.rand(1, generator=g) < self.blur)) else 0.0
        out = []
        for f in frames:
            b, c, sat = (bcs * (1 + 0.25 * self.jitter * u(3))).tolist()
            gm = math.exp(gamma + 0.25 * self.gamma * float(u()))
            f = f * (gain * (1 + 0.25 * self.colour * u(3))).view(3, 1, 1)
            f = f * b
            f = (f - f.mean()) * c + f.mean()
            grey = f.mean(0, keepdim=True)
            f = ((f - grey) * sat + grey).clamp(0, 1)
            if gm != 1.0:
                f = f.pow(gm)
            if sigma:
                f = gaussian_blur(f, sigma)
            if self.noise:
                std = self.noise * float(torch.rand(1, generator=g))
                f = f + std * torch.randn(f.shape, generator=g)
            out.append(f.clamp(0, 1))
        return torch.stack(out)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) → the same, blurred by a separable Gaussian of ``sigma`` pixels (reflect pad)."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    y = F.pad(img[None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def normalize(frames: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=frames.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=frames.dtype).view(-1, 1, 1)
    return (frames - m) / s


# -------------------------------------------------------------------------------------------
# Clip datasets
# -------------------------------------------------------------------------------------------
#: Default bound of a dataset's decoded-frame cache, per process: CamVid's train split
#: (1,101 frames of 480×360, about 0.6 GB) fits whole; Cityscapes' (8,925 frames of
#: 2048×1024, about 56 GB) would not, so only its first frames are kept.
CACHE_MB = 2048


class ClipDataset(Dataset):
    """Base: ``items`` is a list of (frame paths [t-2, t-1, t], label path of t, name).

    ``cache``: keep decoded frames in memory (frames recur across clips and epochs), up to
    ``cache_mb`` megabytes per process; frames beyond the bound are decoded each time."""

    num_classes: int
    class_names: Tuple[str, ...]

    def __init__(self, items: List[Tuple[List[Path], Path, str]], augment: Optional[ClipAugment],
                 seed: int = 0, cache: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 cache_mb: float = CACHE_MB) -> None:
        if not items:
            raise ValueError("dataset is empty")
        self.items = items
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.mean, self.std = tuple(mean), tuple(std)
        self._cache: Optional[Dict[Path, np.ndarray]] = {} if cache else None
        self._cache_left = int(cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw different augmentations each epoch while staying reproducible."""
        self.epoch = epoch

    def _img(self, p: Path) -> np.ndarray:
        if self._cache is None:
            return load_rgb(p)
        img = self._cache.get(p)
        if img is None:
            img = load_rgb(p)
            if img.nbytes <= self._cache_left:              # bounded: see ``cache_mb``
                self._cache[p] = img
                self._cache_left -= img.nbytes
        return img

    def map_label(self, lab: np.ndarray) -> np.ndarray:
        return lab

    def raw(self, i: int) -> Tuple[List[np.ndarray], np.ndarray]:
        """The un-augmented clip: 3 H×W×3 uint8 frames and the H×W uint8 label (IGNORE=255)."""
        paths, lab, _ = self.items[i]
        return [self._img(p) for p in paths], self.map_label(load_label(lab))

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        frames, lab = self.raw(i)
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.from_numpy(lab.astype(np.int64))
        if self.augment is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
            x, y = self.augment(x, y, g)
        return {"frames": normalize(x, self.mean, self.std), "label": y, "index": torch.tensor(i)}

    def class_frequencies(self) -> np.ndarray:
        """Pixel count per class over the split's labels (IGNORE excluded)."""
        counts = np.zeros(self.num_classes, np.int64)
        for _, lab, _ in self.items:
            lab_ = self.map_label(load_label(lab))
            counts += np.bincount(lab_[lab_ < self.num_classes].ravel(), minlength=self.num_classes)
        return counts

    def sequences(self) -> List[List[int]]:
        """Indices grouped into time-ordered sequences (for streaming evaluation)."""
        raise NotImplementedError

    def video_rate(self, seq: List[int]) -> bool:
        """Whether consecutive frames of ``seq`` are video rate (for temporal consistency)."""
        return False


def median_frequency_weights(counts: np.ndarray) -> torch.Tensor:
    """Eigen & Fergus median frequency balancing (as SegNet and ENet train CamVid)."""
    freq = counts / max(1, counts.sum())
    w = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
    return torch.tensor(w, dtype=torch.float32)


_CAMVID_NAME = re.compile(r"^(?P<seq>[^_]+)_f?(?P<num>\d+)\.png$")


class CamVidClips(ClipDataset):
    """CamVid in the 480×360 SegNet layout: ``{split}/`` frames, ``{split}annot/`` labels.

    Labels 0..10 are the classes, 11 (void) becomes IGNORE. Frames of a sequence are ordered by
    their source frame number; a gap larger than ``max_gap`` source frames (30 fps) starts a
    new sequence, so t-1 and t-2 are never from a different part of the drive.

    ``split`` may join splits with ``+`` (``"train+val"``: every labelled frame here); each
    split's frames form their own sequences. ``sequences`` keeps only the drives named
    (CamVid's file prefixes, e.g. ``0006R0``) and ``exclude`` drops them: holding out a
    whole drive measures how the model does on a street it has never seen.
    """

    num_classes = 11
    class_names = CAMVID_CLASSES

    def __init__(self, root: str | Path, split: str = "train", augment: Optional[ClipAugment] = None,
                 max_gap: int = 60, sequences: Optional[Sequence[str]] = None,
                 exclude: Sequence[str] = (), **kw) -> None:
        root = Path(root)
        self._seqs: List[List[int]] = []
        self._nums: List[int] = []
        self._seq_names: List[str] = []
        items: List[Tuple[List[Path], Path, str]] = []
        found: set = set()
        for part in split.split("+"):
            img_dir, lab_dir = root / part, root / f"{part}annot"
            if not img_dir.is_dir() or not lab_dir.is_dir():
                raise FileNotFoundError(f"CamVid split {part!r} not found: expected {img_dir}/ "
                                        f"and {lab_dir}/")
            entries = []
            for p in img_dir.glob("*.png"):
                m = _CAMVID_NAME.match(p.name)
                if not m:
                    continue
                found.add(m["seq"])
                if (sequences is not None and m["seq"] not in sequences) or m["seq"] in exclude:
                    continue
                entries.append((m["seq"], int(m["num"]), p))
            entries.sort(key=lambda e: (e[0], e[1]))
            prev_seq, prev_num = None, None
            for seq, num, p in entries:
                if seq != prev_seq or num - prev_num > max_gap:
                    self._seqs.append([])
                    self._seq_names.append(seq)
                hist = [items[j][0][2] for j in self._seqs[-1][-2:]]  # t-2, t-1 where they exist
                # Frame t stands in for each missing predecessor: (t, t, t), then (t, t-1, t).
                cur_hist = hist if len(hist) == 2 else ([p, hist[0]] if hist else [p, p])
                self._seqs[-1].append(len(items))
                self._nums.append(num)
                items.append((cur_hist + [p], lab_dir / p.name, p.stem))
                prev_seq, prev_num = seq, num
        unknown = sorted(set(sequences or ()).union(exclude) - found)
        if unknown:
            raise ValueError(f"CamVid {split}: no sequence named {', '.join(unknown)} (it has "
                             f"{', '.join(sorted(found))})")
        if not items:
            raise ValueError(f"CamVid {split}: no frames left after selecting sequences")
        missing = [str(it[1]) for it in items if not it[1].exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} label files missing, e.g. {missing[0]}")
        super().__init__(items, augment, **kw)

    def sequence_names(self) -> List[str]:
        """The drive (file prefix) of each of :meth:`sequences`."""
        return list(self._seq_names)

    def map_label(self, lab: np.ndarray) -> np.ndarray:
        lab = lab.copy()
        lab[lab >= self.num_classes] = IGNORE
        return lab

    def sequences(self) -> List[List[int]]:
        return [list(s) for s in self._seqs]

    def video_rate(self, seq: List[int]) -> bool:
        """True where the median gap is at most 3 source frames (>= 10 Hz); val is 15 Hz."""
        gaps = np.diff([self._nums[i] for i in seq])
        return bool(len(gaps)) and float(np.median(gaps)) <= 3


# Cityscapes labelId → trainId (the official table; 255 = ignored).
_CS_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                   24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_CS_LUT = np.full(256, IGNORE, np.uint8)
for _k, _v in _CS_ID_TO_TRAIN.items():
    _CS_LUT[_k] = _v

_CS_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


class CityscapesClips(ClipDataset):
    """Cityscapes in its official layout.

    Frame t is the labelled frame of ``leftImg8bit/{split}``; t-1 and t-2 are the frames
    numbered one and two before it in ``leftImg8bit_sequence/{split}``. labelIds map to the
    19 trainIds (everything else ignored). Each labelled frame is its own sequence.
    """

    num_classes = 19
    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str | Path, split: str = "train", augment: Optional[ClipAugment] = None,
                 **kw) -> None:
        root = Path(root)
        img_dir = root / "leftImg8bit" / split
        seq_dir = root / "leftImg8bit_sequence" / split
        gt_dir = root / "gtFine" / split
        for d in (img_dir, seq_dir, gt_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"Cityscapes folder not found: {d}")
        items = []
        for p in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            m = _CS_NAME.match(p.name)
            if not m:
                continue
            city, seq, frame = m["city"], m["seq"], int(m["frame"])
            hist = []
            for k in (2, 1):
                q = seq_dir / city / f"{city}_{seq}_{frame - k:06d}_leftImg8bit.png"
                if not q.exists():
                    raise FileNotFoundError(f"sequence frame missing for {p.name}: {q}")
                hist.append(q)
            lab = gt_dir / city / f"{city}_{seq}_{frame:06d}_gtFine_labelIds.png"
            if not lab.exists():
                raise FileNotFoundError(f"label missing for {p.name}: {lab}")
            items.append((hist + [p], lab, p.stem))
        super().__init__(items, augment, **kw)

    def map_label(self, lab: np.ndarray) -> np.ndarray:
        return _CS_LUT[lab]

    def sequences(self) -> List[List[int]]:
        return [[i] for i in range(len(self.items))]

    def video_rate(self, seq: List[int]) -> bool:
        return True  # t-2, t-1, t are consecutive 17 Hz frames of leftImg8bit_sequence


def build_dataset(name: str, root: str | Path, split: str, augment: Optional[ClipAugment] = None,
                  **kw) -> ClipDataset:
    if name == "camvid":
        return CamVidClips(root, split, augment, **kw)
    if name == "cityscapes":
        return CityscapesClips(root, split, augment, **kw)
    raise ValueError(f"unknown dataset {name!r}; use camvid or cityscapes")

