"""Backbone geometry: how conv-grid cells map back to image pixels.

Patch-NetVLAD places each patch's keypoint at the centre of the receptive boxes of its corner
cells (DELF-style receptive boxes), so matching needs the backbone's effective receptive field,
stride and padding, and the conv grid size for the actual input size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class BackboneGeometry:
    """Effective receptive field / stride / padding (pixels) of the backbone's output cells.

    ``ceil_grid``: whether the grid size rounds up (ResNets: padded stride-2 convs) or down
    (VGG: 2x2 max-pools).
    """

    receptive_field: float
    stride: int
    padding: float
    ceil_grid: bool = False

    def grid_size(self, image_height: int, image_width: int) -> tuple[int, int]:
        """Conv grid (H, W) produced for an input of the given size."""
        if self.ceil_grid:
            return math.ceil(image_height / self.stride), math.ceil(image_width / self.stride)
        return image_height // self.stride, image_width // self.stride


def geometry_of(layers: Iterable[tuple[int, int, int]], ceil_grid: bool = False) -> BackboneGeometry:
    """Receptive field, stride and padding of a chain of (kernel, stride, padding) layers.

    Follows the deepest path (for residual blocks: the main branch), as in DELF's receptive-box
    computation: rf += (k - 1) * jump, padding += p * jump, jump *= s.
    """
    rf, jump, pad = 1, 1, 0
    for kernel, stride, padding in layers:
        rf += (kernel - 1) * jump
        pad += padding * jump
        jump *= stride
    return BackboneGeometry(receptive_field=float(rf), stride=jump, padding=float(pad), ceil_grid=ceil_grid)


# VGG16 conv5_3 (the Patch-NetVLAD encoder): rf 196, stride 16, padding 90.
VGG16_CONV5_3 = BackboneGeometry(receptive_field=196.0, stride=16, padding=90.0)
