"""Backbones, geometry, device selection and region sums (fast, no data needed)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlad_localization.model.backbones import BACKBONES, build_backbone, detect_backbone
from vlad_localization.model.device import resolve_device, use_half
from vlad_localization.model.geometry import VGG16_CONV5_3, geometry_of
from vlad_localization.model.regions import (
    integral_feature,
    region_grid,
    square_region_sums,
    square_region_sums_direct,
    window_sums,
)


def test_vgg16_geometry_from_layers():
    vgg_layers = [(3, 1, 1)] * 2 + [(2, 2, 0)] + [(3, 1, 1)] * 2 + [(2, 2, 0)] + (
        [(3, 1, 1)] * 3 + [(2, 2, 0)]
    ) * 2 + [(3, 1, 1)] * 3
    assert geometry_of(vgg_layers) == VGG16_CONV5_3
    assert build_backbone("vgg16").geometry == VGG16_CONV5_3


@pytest.mark.parametrize("name,channels,rf,pad", [("resnet18", 256, 211, 105), ("resnet50", 1024, 267, 133)])
def test_resnet_layer3(name, channels, rf, pad):
    net = build_backbone(name).eval()
    assert (net.out_channels, net.geometry.receptive_field, net.geometry.stride, net.geometry.padding) == (
        channels, rf, 16, pad)
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 70, 100))
    assert out.shape == (1, channels, *net.geometry.grid_size(70, 100))
    keys = set(net.state_dict())
    assert "conv1.weight" in keys and "layer3.0.downsample.0.weight" in keys and detect_backbone(keys) == name


def test_vgg16_keys_are_torchvision_features():
    keys = set(build_backbone("vgg16").state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert keys == {f"{i}.{p}" for i in convs for p in ("weight", "bias")}
    assert detect_backbone(keys) == "vgg16"
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("alexnet")
    assert set(BACKBONES) == {"vgg16", "resnet18", "resnet50"}


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert not use_half(torch.device("cpu"), True)
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), size=st.integers(1, 9), stride=st.integers(1, 3))
def test_direct_region_sums_equal_integral_ones(h, w, size, stride):
    if size > min(h, w):
        with pytest.raises(ValueError, match="does not fit"):
            region_grid(h, w, size, stride)
        return
    maps = torch.rand(2, h, w, 3, dtype=torch.float64)
    direct = square_region_sums_direct(maps, size, stride, 1, 2)
    via_integral = square_region_sums(integral_feature(maps, 1, 2), size, stride, 1, 2)
    assert direct.shape == via_integral.shape == (2, *region_grid(h, w, size, stride), 3)
    assert torch.allclose(direct, via_integral)
    brute = torch.stack([torch.stack([maps[:, i * stride:i * stride + size, j * stride:j * stride + size].sum((1, 2))
                                      for j in range(direct.shape[2])], 1) for i in range(direct.shape[1])], 1)
    assert torch.allclose(direct, brute)


def test_window_sums_are_exact_for_tiny_values_next_to_large_ones():
    t = torch.tensor([1e8, 1e-6, 2e-6, 1e8])
    assert window_sums(t, 2, 0)[1].item() == pytest.approx(3e-6, rel=1e-6)
