"""Backbone geometry: how conv-grid cells map back to image pixels.

Patch-NetVLAD places each patch's keypoint at the centre of the receptive boxes of its corner
cells (DELF-style receptive boxes), so matching needs the backbone's effective receptive field,
stride and padding, and the conv grid size for the actual input size.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneGeometry:
    """Effective receptive field / stride / padding (pixels) of the backbone's output cells."""

    receptive_field: float
    stride: int
    padding: float

    def grid_size(self, image_height: int, image_width: int) -> tuple[int, int]:
        """Conv grid (H, W) produced for an input of the given size."""
        return image_height // self.stride, image_width // self.stride


# VGG16 conv5_3 (the Patch-NetVLAD encoder): rf 196, stride 16, padding 90.
VGG16_CONV5_3 = BackboneGeometry(receptive_field=196.0, stride=16, padding=90.0)
