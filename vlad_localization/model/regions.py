"""Integral features and square-region sums (Patch-NetVLAD Sec. 3.2, "integral feature").

Tensors are channels-last over the conv grid: (..., H, W, channels) with the grid at dims
``-3``/``-2`` given by ``grid_dims``. A square region of ``size x size`` cells whose top-left cell is
``(i * stride, j * stride)`` is summed from four corners of the zero-padded integral feature, in
the reference's order, for i, j over the region grid (row-major: the reference's patch order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def region_grid(height: int, width: int, size: int, stride: int) -> tuple[int, int]:
    """Number of (rows, cols) of ``size x size`` regions with ``stride`` on a ``height x width`` grid."""
    if size > height or size > width:
        raise ValueError(
            f"patch size {size} does not fit the {height}x{width} conv grid: use a larger image "
            f"(>= {size * 16} px per side for VGG16) or a smaller patch size"
        )
    return (height - size) // stride + 1, (width - size) // stride + 1


def integral_feature(cells: torch.Tensor, h_dim: int, w_dim: int) -> torch.Tensor:
    """Cumulative sums over the grid (W first, then H, as the reference), zero-padded at the top/left."""
    out = cells.cumsum(dim=w_dim)
    out.cumsum_(dim=h_dim)
    pad = [0, 0] * out.dim()
    # F.pad lists dims from the last one backwards
    pad[2 * (out.dim() - 1 - (w_dim % out.dim()))] = 1
    pad[2 * (out.dim() - 1 - (h_dim % out.dim()))] = 1
    return F.pad(out, pad)


def square_region_sums(integral: torch.Tensor, size: int, stride: int, h_dim: int, w_dim: int) -> torch.Tensor:
    """Sums of every ``size x size`` region (grid stride ``stride``) from a padded integral feature.

    The result keeps the integral's layout with the grid dims replaced by the region grid.
    """
    nh, nw = region_grid(integral.shape[h_dim] - 1, integral.shape[w_dim] - 1, size, stride)

    def corner(dy: int, dx: int) -> torch.Tensor:
        rows = torch.narrow(integral, h_dim, dy, (nh - 1) * stride + 1)
        cols = torch.narrow(rows, w_dim, dx, (nw - 1) * stride + 1)
        if stride == 1:
            return cols
        idx = [slice(None)] * integral.dim()
        idx[h_dim] = slice(None, None, stride)
        idx[w_dim] = slice(None, None, stride)
        return cols[tuple(idx)]

    out = corner(0, 0) - corner(0, size)
    out -= corner(size, 0)
    out += corner(size, size)
    return out


def window_sums(t: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sums of ``size`` consecutive entries along ``dim`` (length L - size + 1), by exact summation:
    a pyramid of pairwise sums (windows of 1, 2, 4, ...) combined by the binary digits of ``size``."""
    n = t.shape[dim] - size + 1
    if n < 1:
        raise ValueError(f"window of {size} is longer than dimension {dim} ({t.shape[dim]})")
    pyramid = [t]
    while (2 << (len(pyramid) - 1)) <= size:
        prev, half = pyramid[-1], 1 << (len(pyramid) - 1)
        length = prev.shape[dim] - half
        pyramid.append(prev.narrow(dim, 0, length) + prev.narrow(dim, half, length))
    out, offset = None, 0
    for level in reversed(range(len(pyramid))):
        if size & (1 << level):
            part = pyramid[level].narrow(dim, offset, n)
            out = part if out is None else out + part
            offset += 1 << level
    return out


def square_region_sums_direct(cells: torch.Tensor, size: int, stride: int, h_dim: int, w_dim: int) -> torch.Tensor:
    """Sums of every ``size x size`` region (grid stride ``stride``) of a cell map, summed directly
    (separable window sums, no integral-feature differences: exact even where the map is tiny
    next to its surroundings). Same region order and layout as :func:`square_region_sums`."""
    region_grid(cells.shape[h_dim], cells.shape[w_dim], size, stride)  # validates
    out = window_sums(window_sums(cells, size, w_dim), size, h_dim)
    if stride > 1:
        idx = [slice(None)] * out.dim()
        idx[h_dim] = slice(None, None, stride)
        idx[w_dim] = slice(None, None, stride)
        out = out[tuple(idx)]
    return out
