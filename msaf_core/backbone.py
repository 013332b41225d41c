"""Dilated ResNet feature extractor (output stride 8, or 16) with torchvision's parameter names.

The paper (§3.2) removes the classifier and the global pooling, and sets the strides of the
last two stages (torchvision's ``layer3`` and ``layer4``; the paper's F4 and F5) to 1 with
dilation 2 and 4. torchvision's ``BasicBlock`` refuses dilation, so the blocks are written
here; module and parameter names match ``torchvision.models.resnet`` exactly, so an ImageNet
state dict of torchvision's ResNet-18/50/101 loads with ``load_state_dict`` (its ``fc.*``
entries dropped).

Stage naming: F1 = conv1/bn1/relu/maxpool (stride 4), F2 = layer1 (stride 4),
F3 = layer2 (stride 8), F4 = layer3 (stride 8, dilation 2), F5 = layer4 (stride 8, dilation 4).

Output stride 16 (``set_output_stride(16)``) keeps layer3's stride 2 (undilated) and dilates
layer4 by 2: F4 and F5 on the 1/16 grid, F3 still at 1/8. The weights are the same tensors
at either stride (only the convolutions' stride, dilation and padding change), so one set of
weights can be trained and run at both; 16 costs about a third of 8 (layers 3 and 4 run on a
quarter of the positions).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Type, Union

import torch
from torch import Tensor, nn


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += idt                                   # in place, as torchvision's blocks do
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += idt
        return self.relu(out)


_SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


OUTPUT_STRIDES = (8, 16)


class DilatedResNet(nn.Module):
    """ResNet trunk returning F3, F4, F5, all at 1/8 of the input size (output stride 8;
    at output stride 16, F4 and F5 at 1/16).

    ``forward(x)``: x (B, 3, H, W) normalised RGB float → dict with ``'f3'`` (B, C3, H/8, W/8),
    ``'f4'`` (B, C4, H/8, W/8), ``'f5'`` (B, C5, H/8, W/8) (sizes rounded up as the convolutions
    round them). C3, C4, C5 = 128, 256, 512 for ResNet-18 and 512, 1024, 2048 for ResNet-50/101.
    """

    def __init__(self, name: str = "resnet18", output_stride: int = 8) -> None:
        super().__init__()
        block, layers = _SPECS[name]
        self.name = name
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=1, dilation=4)
        e = block.expansion
        self.channels: Dict[str, int] = {"f3": 128 * e, "f4": 256 * e, "f5": 512 * e}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch (Goyal et al.): each block starts as an
        # identity, which trains markedly better from scratch.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
        self.output_stride = 8
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Run layers 3 and 4 at output stride 8 (the paper's: stride 1, dilation 2 and 4) or
        16 (layer3 stride 2, dilation 1; layer4 dilation 2). Weights are untouched."""
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        s3, d3, d4 = (1, 2, 4) if output_stride == 8 else (2, 1, 2)
        for layer, dilation in ((self.layer3, d3), (self.layer4, d4)):
            for blk in layer:
                for conv in blk.modules():
                    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        first = self.layer3[0]
        (first.conv1 if isinstance(first, BasicBlock) else first.conv2).stride = (s3, s3)
        if first.downsample is not None:
            first.downsample[0].stride = (s3, s3)
        self.output_stride = output_stride

    def _make_layer(self, block: Type[Union[BasicBlock, Bottleneck]], planes: int, blocks: int,
                    stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: List[nn.Module] = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, dilation))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        f3 = self.layer2(x)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return {"f3": f3, "f4": f4, "f5": f5}

    def load_imagenet(self, path: str) -> List[str]:
        """Load a torchvision ImageNet state dict (``resnetXX-*.pth``) from a local file.

        Returns the keys of the file that were not used (the classifier). Raises
        ``ValueError`` naming the file if its keys or shapes do not fit this backbone.
        """
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"{path}: backbone weights file not found") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
            raise ValueError(f"{path}: not a readable torch state dict ({e})") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        unused = [k for k in sd if k.startswith("fc.")]
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            raise ValueError(
                f"{path}: does not fit a {self.name} backbone "
                f"({len(missing)} missing keys, e.g. {missing[:3]}; "
                f"{len(wrong)} shape mismatches, e.g. {wrong[:3]})")
        self.load_state_dict({k: sd[k] for k in own})
        return unused
