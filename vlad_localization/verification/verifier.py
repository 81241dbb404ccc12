"""Geometric verification of one re-ranked candidate: patch matches -> relative pose.

:func:`verify_candidate` takes the mutual patch matches of candidate ``k`` of a
:class:`~vlad_localization.matching.matcher.MatchResult` (all patch sizes, network-input pixels),
scales them to each camera image, optionally refines them to SIFT matches inside the matched
patch pairs (:mod:`.refine`; needs both images or their SIFT features, else the pair is rejected
``no_features``: the patch keypoints alone, ``refine: none``, give poses 10-22 deg off on EuRoC;
``RelativePose.refine`` says which was used),
and estimates the query -> match pose: PnP when
one side has metric depth (the match side first, what a map stores, then the query side), else the
essential matrix. Depth sources that yield too few points fall back to the monocular estimate
(``metric: false``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlad_localization.verification.camera import PinholeCamera
from vlad_localization.verification.refine import match_in_patches, sift_features
from vlad_localization.verification.relative_pose import (
    RelativePose,
    backproject,
    estimate_metric,
    estimate_monocular,
)

DepthFn = Callable[[np.ndarray], np.ndarray]  # raw pixels (M, 2) -> depth (M,) in metres, NaN unknown


@dataclass
class View:
    """One image of the pair: its camera (intrinsics of the camera image, not the network input),
    the camera image size (H, W), optionally the image itself or its stored SIFT features (for the
    refinement) and a depth function (:data:`DepthFn`). A map keyframe without its image can carry ``features``
    ``(keypoints (N, 2) camera-image pixels, descriptors (N, 128) float32)`` as ``sift_features``
    returns them, and ``depth=depth_lookup(keypoints, depths)``."""

    camera: PinholeCamera
    image_hw: tuple[int, int]
    image: np.ndarray | None = None
    depth: DepthFn | None = None
    features: tuple | None = None  # sift_features(image), computed on first use when not given

    @property
    def can_refine(self) -> bool:
        return self.image is not None or self.features is not None

    def sift(self):
        if self.features is None:
            self.features = sift_features(self.image)
        return self.features


def to_image_pixels(points: np.ndarray, input_hw, image_hw) -> np.ndarray:
    """Network-input pixels -> camera-image pixels (the input is the image resized to ``input_hw``)."""
    return np.asarray(points, np.float64).reshape(-1, 2) * [image_hw[1] / input_hw[1], image_hw[0] / input_hw[0]]


def refined_matches(patch_sizes, correspondences, input_hw, query: View, match: View, cfg, cell_px: int = 16):
    """SIFT matches (query (M, 2), match (M, 2), camera-image pixels) inside one candidate's matched
    patch pairs (``correspondences``: one per patch size); each pair's box is ``cfg.refine_window``
    x the patch's extent (size x ``cell_px``)."""
    centres_q, centres_m, halves = [], [], []
    for size, corr in zip(patch_sizes, correspondences):
        centres_q.append(to_image_pixels(corr.query_keypoints, input_hw, query.image_hw))
        centres_m.append(to_image_pixels(corr.candidate_keypoints, input_hw, match.image_hw))
        extent = to_image_pixels([[size * cell_px, size * cell_px]], input_hw, query.image_hw)[0]
        halves.append(np.repeat(extent[None] * cfg.refine_window / 2, len(corr.query_keypoints), axis=0))
    return match_in_patches(query.sift(), match.sift(), np.concatenate(centres_q), np.concatenate(centres_m),
                            np.concatenate(halves))


def verify_candidate(result, k: int, input_hw, query: View, match: View, cfg, cell_px: int = 16) -> RelativePose:
    """Relative pose of candidate ``k`` of a MatchResult (``cfg``: a VerificationConfig; ``input_hw``:
    the network input size the keypoints are in; ``cell_px``: the backbone stride, 16 for VGG16 and
    ResNet layer3)."""
    return verify_correspondences(result.patch_sizes, result.correspondences[k], input_hw, query, match, cfg, cell_px)


def verify_correspondences(patch_sizes, correspondences, input_hw, query: View, match: View, cfg,
                           cell_px: int = 16, refine: str | None = None) -> RelativePose:
    """Relative pose from one candidate's mutual patch matches (one ``Correspondences`` per patch
    size, as ``pipeline.Candidate.matches`` keeps them); ``refine`` overrides ``cfg.refine``
    (``none``: the patch keypoints alone, e.g. for a map keyframe stored without its image)."""
    refine = cfg.refine if refine is None else refine
    if refine == "sift":
        if not (query.can_refine and match.can_refine):
            return RelativePose.rejected("no_features")
        q_px, m_px = refined_matches(patch_sizes, correspondences, input_hw, query, match, cfg, cell_px)
    else:
        q_kp = np.concatenate([c.query_keypoints for c in correspondences]).reshape(-1, 2)
        m_kp = np.concatenate([c.candidate_keypoints for c in correspondences]).reshape(-1, 2)
        q_px, m_px = to_image_pixels(q_kp, input_hw, query.image_hw), to_image_pixels(m_kp, input_hw, match.image_hw)
    pose = estimate_pose(q_px, m_px, query, match, cfg)
    pose.refine = refine
    return pose


def estimate_pose(q_px: np.ndarray, m_px: np.ndarray, query: View, match: View, cfg) -> RelativePose:
    """Relative pose from correspondences in raw camera-image pixels (see the module doc)."""
    sides = ((match, m_px, query, q_px, False), (query, q_px, match, m_px, True))  # (3-D view, its pixels, 2-D ...)
    for view_3d, px_3d, view_2d, px_2d, in_query in sides:
        if view_3d.depth is None or not len(px_3d):
            continue
        points = backproject(view_3d.camera, px_3d, np.asarray(view_3d.depth(px_3d), np.float64))
        metric = estimate_metric(points, px_2d, view_2d.camera, cfg, points_in_query=in_query)
        if metric.status != "too_few_depth":
            return metric
    return estimate_monocular(q_px, m_px, query.camera, match.camera, cfg)
