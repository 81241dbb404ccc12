"""Convolutional backbones in plain torch (no torchvision), with torchvision-compatible keys.

* ``vgg16``: VGG16 ``features`` up to conv5_3 (the Patch-NetVLAD encoder: the last ReLU and
  max-pool dropped), an ``nn.Sequential`` whose keys are ``N.weight``/``N.bias`` exactly like
  ``torchvision.models.vgg16().features`` - so ``features.N.*`` ImageNet files and the official
  checkpoints' ``encoder.N.*`` load unchanged.
* ``resnet18`` / ``resnet50``: torchvision ResNets truncated after ``layer3`` (stride 16), keys
  ``conv1.*``, ``bn1.*``, ``layer1..3.*``.
"""
from __future__ import annotations

from torch import nn

from vlad_localization.choices import BACKBONES  # the one list of names

from .geometry import VGG16_CONV5_3, BackboneGeometry, geometry_of

# conv channel widths of VGG16's 13 conv layers, "M" = 2x2 max-pool
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG16Conv5(nn.Sequential):
    """VGG16 conv1_1 .. conv5_3 (+ReLUs), output 512 channels at stride 16 (rf 196 px)."""

    out_channels = 512
    geometry = VGG16_CONV5_3

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = item
        super().__init__(*layers[:-1])  # conv5_3 without its ReLU (as the reference's [:-2])


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, ch * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, ch * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(ch * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, ch * self.expansion, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNetLayer3(nn.Module):
    """A torchvision ResNet truncated after ``layer3`` (stride 16)."""

    def __init__(self, block: type, blocks: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (width, n, stride) in enumerate(zip((64, 128, 256), blocks, (1, 2, 2)), start=1):
            layer = [block(in_ch, width, stride)] + [
                block(width * block.expansion, width) for _ in range(n - 1)
            ]
            in_ch = width * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.out_channels = in_ch
        self.geometry = _resnet_geometry(block, blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def _resnet_geometry(block: type, blocks: tuple[int, int, int]) -> BackboneGeometry:
    """Receptive field of the main branch: stem, then each block's 3x3 convs (the stride-2 one first)."""
    layers = [(7, 2, 3), (3, 2, 1)]
    convs_3x3 = 2 if block is BasicBlock else 1
    for n, stride in zip(blocks, (1, 2, 2)):
        for b in range(n):
            layers.append((3, stride if b == 0 else 1, 1))
            layers += [(3, 1, 1)] * (convs_3x3 - 1)
    return geometry_of(layers, ceil_grid=True)


def build_backbone(name: str) -> nn.Module:
    """An uninitialised backbone (``vgg16``, ``resnet18`` or ``resnet50``) with ``out_channels``
    and ``geometry`` attributes."""
    if name == "vgg16":
        return VGG16Conv5()
    if name == "resnet18":
        return ResNetLayer3(BasicBlock, (2, 2, 2))
    if name == "resnet50":
        return ResNetLayer3(Bottleneck, (3, 4, 6))
    raise ValueError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")


def detect_backbone(keys) -> str | None:
    """Which backbone a (prefix-stripped) state dict's keys belong to, or None."""
    keys = set(keys)
    if "28.weight" in keys and "0.weight" in keys:
        return "vgg16"
    if "layer3.0.conv1.weight" in keys:
        return "resnet50" if "layer1.0.conv3.weight" in keys else "resnet18"
    return None
