"""Multi-scale fusion of per-patch-size scores (Hausler et al., CVPR 2021).

``absolute``: a weighted mean of the absolute per-size scores (weights normalised to sum 1), so a
single query/candidate pair gets a score in [0, 1] that can be thresholded.
``reference``: the official re-ranking - z-score each size's official scores over the candidates,
sum with the patch weights, ascending argsort. Its values only rank candidates of one query.
"""
from __future__ import annotations

import numpy as np


def normalised_weights(weights, num_sizes: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_sizes,):
        raise ValueError(f"need one patch weight per patch size ({num_sizes}), got {list(weights)}")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"patch weights {list(weights)} must be finite, >= 0 and not all zero")
    return w / w.sum()


def absolute_fusion(per_size: np.ndarray, weights) -> np.ndarray:
    """(K,) weighted mean of absolute per-size scores (K, S)."""
    return np.clip(per_size @ normalised_weights(weights, per_size.shape[1]), 0.0, 1.0)


def absolute_order(fused: np.ndarray) -> np.ndarray:
    """Candidates by descending absolute score; ties keep the incoming (global) order."""
    return np.argsort(-fused, kind="stable")


def reference_fusion(official: np.ndarray, weights) -> np.ndarray:
    """(K,) official z-score fusion of per-size official scores (K, S); smaller is better.

    Identical to the reference's ``normalise_func`` except that a size whose scores are all equal
    (one candidate, identical candidates) contributes 0 instead of NaN.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (official.shape[1],):
        raise ValueError(f"need one patch weight per patch size ({official.shape[1]}), got {list(weights)}")
    fused = np.zeros(official.shape[0])
    for i in range(official.shape[1]):
        column = np.ascontiguousarray(official[:, i])
        spread = np.std(column)
        if spread > 0:
            fused = fused + weights[i] * ((column - np.mean(column)) / spread)
    return fused


def reference_order(official: np.ndarray, weights) -> np.ndarray:
    """The official re-ranked order (ascending fused z-score, ``np.argsort`` as the reference)."""
    return np.argsort(reference_fusion(official, weights))
