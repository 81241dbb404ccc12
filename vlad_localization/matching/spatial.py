"""Rapid spatial scoring (Hausler et al., CVPR 2021; the official "spatialApproximator").

For the mutual matches of one patch size, with ``d = candidate grid index - query grid index`` and
its mean ``d_mean`` over the matches, each match scores
``(x_max - |d_x - mean_x|)^2 + (y_max - |d_y - mean_y|)^2`` where ``(x_max, y_max)`` are the largest
patch grid indices. The official score is ``-sum / num_query_patches`` (negative, smaller is better).

Its maximum is reached when every query patch is matched with zero residual (a pure translation):
``num_query_patches * (x_max^2 + y_max^2)``, so the absolute score ``sum / that`` lies in [0, 1].
(Each term is at most ``x_max^2 + y_max^2`` because residuals lie in ``[0, 2 * max]``.)
"""
from __future__ import annotations

import numpy as np


def spatial_anchor(indices: np.ndarray) -> tuple[int, int]:
    """(x_max, y_max): the largest patch grid indices, the formula's anchors."""
    return int(np.max(indices[0])), int(np.max(indices[1]))


def spatial_sum(query_indices: np.ndarray, candidate_indices: np.ndarray, anchor: tuple[int, int]) -> float:
    """Sum of the per-match spatial terms for matched grid indices ((2, M) int each, M >= 1)."""
    offsets = candidate_indices - query_indices
    mean_offset = np.mean(offsets, axis=1)
    residual_x = np.absolute(offsets[0, :] - mean_offset[0])
    residual_y = np.absolute(offsets[1, :] - mean_offset[1])
    terms = (anchor[0] - residual_x) ** 2 + (anchor[1] - residual_y) ** 2
    return float(terms.sum())


def spatial_scores(
    query_indices: np.ndarray, candidate_indices: np.ndarray, anchor: tuple[int, int], num_query_patches: int
) -> tuple[float, float]:
    """(official score <= 0, absolute score in [0, 1]) of one candidate's mutual matches."""
    num_matches = query_indices.shape[1]
    if num_matches == 0:
        return 0.0, 0.0
    total = spatial_sum(query_indices, candidate_indices, anchor)
    official = -total / num_query_patches
    best_term = anchor[0] ** 2 + anchor[1] ** 2
    if best_term == 0:  # a single patch position: every match is a perfect one
        return official, num_matches / num_query_patches
    return official, float(np.clip(total / (num_query_patches * best_term), 0.0, 1.0))
