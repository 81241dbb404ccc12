"""Finer correspondences inside the matched Patch-NetVLAD patches (guided local feature matching).

Patch keypoints lie on the conv grid (one every 16 network-input pixels for VGG16, ~38 px in a
752-wide camera image after a 320-wide network input), far too coarse for an essential matrix.
Inside each mutually matched patch pair we match SIFT features (Lowe, IJCV 2004): a query feature
may only match a candidate feature when some matched patch pair contains both (its query box holds
the one and its candidate box the other), the nearest allowed neighbour must pass Lowe's ratio test
against the second nearest allowed one and be mutual. The patch matches thus restrict the search
to the places Patch-NetVLAD found alike, as hloc matches only retrieved pairs.
"""
from __future__ import annotations

import cv2
import numpy as np

RATIO = 0.85  # Lowe's ratio test among the allowed neighbours
MAX_FEATURES = 2000


def gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def sift_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints (N, 2) raw pixels and descriptors (N, 128) float32 of an RGB or grey image."""
    keypoints, descriptors = cv2.SIFT_create(MAX_FEATURES).detectAndCompute(gray(image), None)
    if descriptors is None:
        return np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    return np.array([k.pt for k in keypoints], dtype=np.float64), descriptors


def _in_boxes(points: np.ndarray, centres: np.ndarray, half: np.ndarray) -> np.ndarray:
    """(N, P) bool: point n lies in the box of half-size ``half`` ((2,) or (P, 2)) around centre p."""
    return np.all(np.abs(points[:, None, :] - centres[None, :, :]) <= half, axis=2)


def match_in_patches(query_features, match_features, query_centres: np.ndarray, match_centres: np.ndarray,
                     half_size) -> tuple[np.ndarray, np.ndarray]:
    """Guided matches ``(query (M, 2), match (M, 2))`` raw pixels between two images' features
    (``sift_features`` outputs) inside the matched patch pairs (centres (P, 2) raw pixels, row by row)
    with boxes of ``half_size`` (x, y) pixels: one (2,) for all or one row (P, 2) per pair."""
    (q_pts, q_desc), (m_pts, m_desc) = query_features, match_features
    empty = np.zeros((0, 2))
    if not len(q_pts) or not len(m_pts) or not len(query_centres):
        return empty, empty
    half = np.asarray(half_size, np.float64)
    in_q, in_m = _in_boxes(q_pts, query_centres, half), _in_boxes(m_pts, match_centres, half)
    rows, cols = np.flatnonzero(in_q.any(1)), np.flatnonzero(in_m.any(1))  # features in some patch
    if len(rows) < 1 or len(cols) < 2:
        return empty, empty
    allowed = (in_q[rows].astype(np.float32) @ in_m[cols].astype(np.float32).T) > 0
    qd, md = np.asarray(q_desc[rows], np.float32), np.asarray(m_desc[cols], np.float32)
    dist2 = (qd * qd).sum(1)[:, None] + (md * md).sum(1)[None, :] - 2.0 * (qd @ md.T)  # squared distances
    dist2[~allowed] = np.inf
    nearest = np.argpartition(dist2, 1, axis=1)[:, :2]
    d_two = np.take_along_axis(dist2, nearest, axis=1)
    swap = d_two[:, 1] < d_two[:, 0]
    best = np.where(swap, nearest[:, 1], nearest[:, 0])
    d_best, d_second = np.where(swap, d_two[:, 1], d_two[:, 0]), np.where(swap, d_two[:, 0], d_two[:, 1])
    mutual = np.argmin(dist2, axis=0)[best] == np.arange(len(rows))
    keep = np.isfinite(d_best) & (d_best < RATIO * RATIO * d_second) & mutual
    return q_pts[rows[keep]], m_pts[cols[best[keep]]]
