"""RANSAC scoring (Hausler et al., CVPR 2021): a homography between mutually matched patch keypoints.

The score of one patch size is the number of RANSAC inliers divided by the number of query patches
(the reference's normalisation, so sizes are comparable); it is in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_MATCHES = 4  # a homography needs four correspondences


@dataclass
class HomographyFit:
    """Inlier correspondences (M, 2) float pixel arrays and ``homography`` (3x3, maps candidate
    pixels to query pixels) or None when fewer than four matches or no fit was found."""

    query_keypoints: np.ndarray
    candidate_keypoints: np.ndarray
    homography: np.ndarray | None

    @property
    def inliers(self) -> int:
        return int(self.query_keypoints.shape[0])


def reprojection_threshold(backbone_stride: int, patch_stride: int, factor: float) -> float:
    """RANSAC reprojection threshold in pixels: one patch step in the image times ``factor``
    (16 * 1 * 1.5 = 24 px for VGG16 and the official presets)."""
    return float(backbone_stride * patch_stride * factor)


def no_fit() -> HomographyFit:
    empty = np.zeros((0, 2), dtype=np.float64)
    return HomographyFit(empty, empty.copy(), None)


def fit_homography(
    query_keypoints: np.ndarray,
    candidate_keypoints: np.ndarray,
    threshold: float,
    seed: int | None = None,
) -> HomographyFit:
    """RANSAC homography from candidate to query keypoints ((M, 2) each, matched row by row).

    ``seed`` (when not None) seeds OpenCV's RNG just before the fit, so results are repeatable.
    """
    if len(query_keypoints) != len(candidate_keypoints):
        raise ValueError("query and candidate keypoints must be matched row by row")
    if len(query_keypoints) < MIN_MATCHES:
        return no_fit()
    src = np.ascontiguousarray(candidate_keypoints, dtype=np.float32)
    dst = np.ascontiguousarray(query_keypoints, dtype=np.float32)
    if seed is not None:
        cv2.setRNGSeed(int(seed))
    homography, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransacReprojThreshold=threshold)
    if mask is None:
        return no_fit()
    keep = mask.ravel() == 1
    return HomographyFit(
        np.asarray(query_keypoints, dtype=np.float64)[keep],
        np.asarray(candidate_keypoints, dtype=np.float64)[keep],
        homography,
    )
