"""Typed, validated configuration of an MSAF model.

Everything that describes a model (its shape and the meaning of its inputs and outputs) lives
in :class:`MSAFConfig`, so a checkpoint can rebuild the exact network it was trained as.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Tuple

BACKBONES = ("resnet18", "resnet50", "resnet101")

#: The rows of the paper's Table 3 that a config can reproduce.
VARIANTS = (
    "msaf",               # the full framework: motion + state alignment + semantic assignment
    "motion_only",        # motion alignment branch alone; its soft region mask is the output
    "state_only",         # stage transformer over F3, F4, F5 of frame t alone, no motion branch
    "without_motion",     # no temporal information: the single-frame variant
    "without_state",      # motion features and backbone features concatenated, no S-Transformer
    "without_semantics",  # average of the motion mask and the state mask, no semantic assignment
    "without_dcn",        # the aligned temporal transformer without deformable alignment
)

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MSAFConfig:
    """Shape and meaning of an MSAF network. Invalid values raise ``ValueError``."""

    backbone: str = "resnet18"          # feature extractor: resnet18 | resnet50 | resnet101
    num_classes: int = 11               # K, the number of semantic classes (void excluded)
    class_names: Tuple[str, ...] = CAMVID_CLASSES  # one name per class id 0..K-1
    palette: Tuple[Tuple[int, int, int], ...] = CAMVID_PALETTE  # RGB colour per class id
    dim: int = 128                      # width d of motion tokens, stage tokens and descriptors
    heads: int = 4                      # attention heads in every transformer block (d % heads == 0)
    mlp_ratio: float = 2.0              # hidden width of each transformer MLP, as a multiple of d
    dcn_kernel: int = 3                 # K of the deformable alignment (paper: 3)
    dcn_groups: int = 8                 # offset groups of the deformable convolution (d % groups == 0)
    pst_pool: Tuple[int, int, int] = (4, 2, 1)  # PST down-sampling of frames t-2, t-1, t
    output_stride: int = 8              # backbone grid: 8 (the paper's), or 16 (about 3× cheaper)
    logit_scale: float = 10.0           # initial scale s of the cosine logits s*cos(P, R) (learned)
    variant: str = "msaf"               # which row of the paper's Table 3 (see VARIANTS)
    mean: Tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean of [0,1] input, RGB
    std: Tuple[float, float, float] = IMAGENET_STD    # per-channel std of [0,1] input, RGB
    channel_order: str = "RGB"          # channel order of the input tensor (only RGB)
    ignore_index: int = 255             # label value ignored by the losses and metrics

    def __post_init__(self) -> None:
        # Normalise list inputs (JSON, YAML) to tuples so the config stays hashable.
        for name in ("class_names", "mean", "std", "pst_pool"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette))
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not isinstance(self.num_classes, int) or not 1 <= self.num_classes <= 255:
            raise ValueError(f"num_classes must be an int in 1..255, got {self.num_classes!r}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        if len(self.palette) != self.num_classes:
            raise ValueError(
                f"palette has {len(self.palette)} colours but num_classes is {self.num_classes}")
        for c in self.palette:
            if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                raise ValueError(f"palette colours must be 3 values in 0..255, got {c!r}")
        if not isinstance(self.dim, int) or self.dim < 8:
            raise ValueError(f"dim must be an int >= 8, got {self.dim!r}")
        if not isinstance(self.heads, int) or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"heads must be a positive divisor of dim={self.dim}, got {self.heads!r}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.dcn_kernel not in (1, 3, 5, 7):
            raise ValueError(f"dcn_kernel must be 1, 3, 5 or 7, got {self.dcn_kernel!r}")
        if self.dcn_groups < 1 or self.dim % self.dcn_groups:
            raise ValueError(f"dcn_groups must divide dim={self.dim}, got {self.dcn_groups!r}")
        if len(self.pst_pool) != 3 or any((not isinstance(p, int)) or p < 1 for p in self.pst_pool):
            raise ValueError(f"pst_pool must be 3 positive ints (t-2, t-1, t), got {self.pst_pool!r}")
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {self.output_stride!r}")
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std must be 3 values each, std > 0")
        if self.channel_order != "RGB":
            raise ValueError(f"channel_order must be 'RGB', got {self.channel_order!r}")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index must be in num_classes..255, got {self.ignore_index!r}")

    # Derived switches --------------------------------------------------------------------
    @property
    def uses_motion(self) -> bool:
        """The decoupled transformer over t-2, t-1, t runs (temporal information is used)."""
        return self.variant not in ("state_only", "without_motion")

    @property
    def uses_state(self) -> bool:
        """The stage transformer runs."""
        return self.variant not in ("motion_only", "without_state")

    @property
    def uses_assignment(self) -> bool:
        """Final logits come from cosine similarity between pixel and region descriptors."""
        return self.variant in ("msaf", "without_motion", "without_state", "without_dcn")

    @property
    def uses_dcn(self) -> bool:
        return self.uses_motion and self.variant != "without_dcn"

    @property
    def temporal(self) -> bool:
        """Whether the output depends on frames t-1 and t-2."""
        return self.uses_motion

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python types only (lists, numbers, strings): safe for ``weights_only`` loads."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MSAFConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> "MSAFConfig":
        return dataclasses.replace(self, **changes)


def default_dim(backbone: str) -> int:
    """The head width d we use for a backbone: 128 for ResNet-18 (the shipped model), 256
    for ResNet-50/101 (see docs/design.md)."""
    return 128 if backbone == "resnet18" else 256


def cityscapes_config(**kw: Any) -> MSAFConfig:
    """Config for the 19 Cityscapes train ids."""
    kw.setdefault("num_classes", 19)
    kw.setdefault("class_names", CITYSCAPES_CLASSES)
    kw.setdefault("palette", CITYSCAPES_PALETTE)
    return MSAFConfig(**kw)

