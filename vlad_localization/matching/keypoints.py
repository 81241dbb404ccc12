"""Patch keypoints: where each Patch-NetVLAD patch lies in the image (Hausler et al., CVPR 2021).

A patch of ``patch_size`` x ``patch_size`` conv cells is placed in the image at the centre of the
receptive boxes of its top-left and bottom-right cells (DELF-style receptive boxes, derived from the
backbone's receptive field, stride and padding). RANSAC uses these pixel keypoints; rapid spatial
scoring uses the patches' grid indices.

Patch order is the pooling's: row-major over the patch grid of
``((H - patch_size) // patch_stride + 1) x ((W - patch_size) // patch_stride + 1)`` patches.

Patch stride > 1: patch ``(r, c)`` covers conv cells from ``(r * patch_stride, c * patch_stride)``
and its grid index is that top-left cell ``(x, y) = (c * patch_stride, r * patch_stride)``. The
reference ``calc_keypoint_centers_from_patches`` instead loops ``range(0, Hout, stride)`` over the
*patch* grid, so for stride > 1 it fills only every stride-th row/column (the rest of its arrays stay
zero) and pairs them with the wrong descriptors. For stride 1 (all official presets) both agree
exactly, including the truncation of half-pixel centres toward zero.
"""
from __future__ import annotations

import numpy as np

from vlad_localization.model.geometry import BackboneGeometry


def patch_grid_shape(grid_hw: tuple[int, int], patch_size: int, patch_stride: int) -> tuple[int, int]:
    """Number of patches (rows, columns) that pooling ``patch_size`` with ``patch_stride`` yields."""
    height, width = (int(v) for v in grid_hw)
    if patch_size < 1 or patch_stride < 1:
        raise ValueError(f"patch size {patch_size} and stride {patch_stride} must be >= 1")
    if patch_size > min(height, width):
        raise ValueError(
            f"patch size {patch_size} does not fit the {height}x{width} conv grid: use a larger "
            "network input size (model.image_height/width) or a smaller patch size"
        )
    return (height - patch_size) // patch_stride + 1, (width - patch_size) // patch_stride + 1


def patch_keypoints(
    geometry: BackboneGeometry, grid_hw: tuple[int, int], patch_size: int, patch_stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``(2, P)`` (image x, y pixels) and grid indices ``(2, P)`` (conv cell x, y) of every patch.

    The keypoint is the midpoint between the top-left corner of the receptive box of the patch's
    top-left cell and the bottom-right corner of the box of its bottom-right cell, truncated to int.
    """
    rows, cols = patch_grid_shape(grid_hw, patch_size, patch_stride)
    first_x = np.arange(cols) * patch_stride  # top-left conv cell of each patch
    first_y = np.arange(rows) * patch_stride
    last_x = first_x + patch_size - 1
    last_y = first_y + patch_size - 1

    def box_start(cell: np.ndarray) -> np.ndarray:
        return cell * float(geometry.stride) - geometry.padding

    def box_end(cell: np.ndarray) -> np.ndarray:
        return box_start(cell) + geometry.receptive_field - 1

    centre_x = ((box_start(first_x) + box_end(last_x)) / 2).astype(int)
    centre_y = ((box_start(first_y) + box_end(last_y)) / 2).astype(int)
    grid_y, grid_x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    keypoints = np.stack([centre_x[grid_x.ravel()], centre_y[grid_y.ravel()]])
    indices = np.stack([first_x[grid_x.ravel()], first_y[grid_y.ravel()]])
    return keypoints, indices
