"""Parity of the batched matcher with the official QVPR Patch-NetVLAD matcher on real images.

Descriptors: the off-the-shelf encoder (``speed_checkpoint``) at 240x320 with the performance
preset's patch sizes 2, 5, 8. The reference ``PatchMatcher`` is run per candidate exactly as
``local_matcher`` does.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_matching_support import GARDENS_DAY, GARDENS_NIGHT, IMAGE_HW, NAMES, PATCH_SIZES, STRIDES, TOKYO
from test_matching_support import PERFORMANCE_WEIGHTS as WEIGHTS
from test_matching_support import real_descriptors

from vlad_localization.config import MatchingConfig
from vlad_localization.matching.fusion import reference_order
from vlad_localization.matching.keypoints import patch_keypoints
from vlad_localization.matching.matcher import PatchMatcher
from vlad_localization.matching.mutual import mutual_nearest_neighbours
from vlad_localization.model.geometry import VGG16_CONV5_3

ref_lm = pytest.importorskip("patchnetvlad.models.local_matcher")
ref_pm = pytest.importorskip("patchnetvlad.tools.patch_matcher")

GRID = (IMAGE_HW[0] // 16, IMAGE_HW[1] // 16)
SEED = 7


@pytest.fixture(scope="module")
def descriptors(speed_checkpoint, datasets_dir):
    """{P: (N, num_patches, D)} of GardensPoint day queries 0-4, night refs 0-4, the Tokyo pair."""
    _, desc = real_descriptors(speed_checkpoint, datasets_dir)
    rows = [NAMES.index(n) for n in GARDENS_DAY[:5] + GARDENS_NIGHT[:5] + list(TOKYO)]
    return {p: t[rows] for p, t in desc.patches.items()}


def _reference_matcher(matcher: str):
    keypoints, indices = [], []
    for p, s in zip(PATCH_SIZES, STRIDES):
        kp, idx = ref_lm.calc_keypoint_centers_from_patches(
            {"imageresizeH": IMAGE_HW[0], "imageresizeW": IMAGE_HW[1]}, p, p, s, s
        )
        keypoints.append(kp)
        indices.append(idx)
    return ref_pm.PatchMatcher(matcher, list(PATCH_SIZES), list(STRIDES), keypoints, indices)


def _reference_scores(matcher: str, descriptors, q: int, cands: list[int]):
    """Per-candidate official scores and inlier keypoints, looping like ``local_matcher``."""
    ref = _reference_matcher(matcher)
    qfeat = [torch.transpose(descriptors[p][q].transpose(0, 1).contiguous(), 0, 1) for p in PATCH_SIZES]
    scores, inliers = [], []
    for c in cands:
        dbfeat = [descriptors[p][c].transpose(0, 1).contiguous() for p in PATCH_SIZES]
        s, q_kp, db_kp = ref.match(qfeat, dbfeat)
        scores.append(s)
        inliers.append((q_kp, db_kp))
    return np.array(scores), inliers


@pytest.fixture
def seeded_reference_ransac(monkeypatch):
    """Seed OpenCV's RNG before each of the reference's findHomography calls, as we do."""
    original = cv2.findHomography

    def seeded(*args, **kwargs):
        cv2.setRNGSeed(SEED)
        return original(*args, **kwargs)

    monkeypatch.setattr(ref_pm.cv2, "findHomography", seeded)


def _official_order(theirs: np.ndarray) -> np.ndarray:
    """The reference's re-ranked order; a size whose scores are all equal would make its
    ``normalise_func`` NaN, and we (documented) drop such a size instead."""
    varying = [s for s in range(theirs.shape[1]) if np.std(theirs[:, s]) > 0]
    weights = np.array(WEIGHTS)[varying]
    return np.argsort(ref_lm.normalise_func(theirs[:, varying], len(varying), weights))


def _ours(matcher: str, fusion: str = "absolute") -> PatchMatcher:
    cfg = MatchingConfig(matcher=matcher, patch_weights=list(WEIGHTS), fusion=fusion, ransac_seed=SEED)
    return PatchMatcher(cfg, PATCH_SIZES, STRIDES, VGG16_CONV5_3, GRID, IMAGE_HW)


def test_keypoints_match_reference_at_640x480_and_test_size():
    for hw in ((480, 640), IMAGE_HW):
        for p in (1, 2, 5, 8):
            ours = patch_keypoints(VGG16_CONV5_3, (hw[0] // 16, hw[1] // 16), p, 1)
            theirs = ref_lm.calc_keypoint_centers_from_patches({"imageresizeH": hw[0], "imageresizeW": hw[1]}, p, p, 1, 1)
            np.testing.assert_array_equal(ours[0], theirs[0])
            np.testing.assert_array_equal(ours[1], theirs[1])


def test_mutual_matches_identical_to_reference(descriptors):
    cands = list(range(5, 12))
    for p in PATCH_SIZES:
        batched = mutual_nearest_neighbours(descriptors[p][0], descriptors[p][cands])
        qfeat = descriptors[p][0]
        for k, c in enumerate(cands):
            fw, bw = ref_pm.torch_nn(qfeat, descriptors[p][c].transpose(0, 1).contiguous())
            fw, bw = fw.numpy(), bw.numpy()
            ref_mutual = np.atleast_1d(np.argwhere(bw[fw] == np.arange(len(fw))).squeeze())
            q_idx, c_idx = batched.pairs(k)
            np.testing.assert_array_equal(c_idx, ref_mutual)
            np.testing.assert_array_equal(q_idx, fw[ref_mutual])


@pytest.mark.parametrize("query", [0, 4, 10])
def test_spatial_scores_and_reference_order_identical(descriptors, query):
    cands = [c for c in range(12) if c != query]
    theirs, _ = _reference_scores("spatialApproximator", descriptors, query, cands)
    candidates = {p: descriptors[p][cands] for p in PATCH_SIZES}
    result = _ours("spatial", "reference").score({p: descriptors[p][query] for p in PATCH_SIZES}, candidates)
    np.testing.assert_allclose(result.raw, theirs, rtol=1e-6)
    assert np.all(np.std(theirs, axis=0) > 0)
    expected_order = np.argsort(ref_lm.normalise_func(theirs, len(PATCH_SIZES), np.array(WEIGHTS)))
    np.testing.assert_array_equal(result.order, expected_order)
    np.testing.assert_array_equal(reference_order(theirs, WEIGHTS), expected_order)
    assert np.all((result.per_size >= 0) & (result.per_size <= 1))


@pytest.mark.parametrize("query", [0, 10])
def test_ransac_inlier_sets_and_order_identical(descriptors, seeded_reference_ransac, query):
    cands = [c for c in range(12) if c != query]
    theirs, their_inliers = _reference_scores("RANSAC", descriptors, query, cands)
    candidates = {p: descriptors[p][cands] for p in PATCH_SIZES}
    result = _ours("ransac", "reference").score({p: descriptors[p][query] for p in PATCH_SIZES}, candidates)
    np.testing.assert_array_equal(result.raw, theirs)
    mutual_counts = {p: mutual_nearest_neighbours(descriptors[p][query], candidates[p]).counts() for p in PATCH_SIZES}
    for k in range(len(cands)):
        # the reference lists inliers only for sizes with >= 4 mutual matches
        fitted = [s for s, p in enumerate(PATCH_SIZES) if mutual_counts[p][k] >= 4]
        q_kp, db_kp = their_inliers[k]
        assert len(q_kp) == len(fitted)
        for s, their_q, their_db in zip(fitted, q_kp, db_kp):
            corr = result.correspondences[k][s]
            np.testing.assert_array_equal(corr.query_keypoints, their_q)
            np.testing.assert_array_equal(corr.candidate_keypoints, their_db)
            assert result.inliers[k, s] == len(their_q)
        for s in set(range(len(PATCH_SIZES))) - set(fitted):
            assert result.inliers[k, s] == 0 and result.correspondences[k][s].homography is None
            assert result.raw[k, s] == 0 and result.per_size[k, s] == 0
    np.testing.assert_allclose(result.per_size, -theirs)
    np.testing.assert_array_equal(result.order, _official_order(theirs))


def test_ransac_is_repeatable_with_a_seed(descriptors):
    cands = list(range(4, 12))
    query = {p: descriptors[p][3] for p in PATCH_SIZES}
    candidates = {p: descriptors[p][cands] for p in PATCH_SIZES}
    first = _ours("ransac").score(query, candidates)
    cv2.setRNGSeed(12345)  # whatever state OpenCV's RNG is left in
    second = _ours("ransac").score(query, candidates)
    np.testing.assert_array_equal(first.inliers, second.inliers)
    np.testing.assert_array_equal(first.fused, second.fused)
