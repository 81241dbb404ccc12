"""Patch matching building blocks and every edge case of scoring and fusion (synthetic descriptors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vlad_localization.config import MatchingConfig, load_config
from vlad_localization.matching.fusion import absolute_fusion, reference_fusion, reference_order
from vlad_localization.matching.keypoints import patch_grid_shape, patch_keypoints
from vlad_localization.matching.matcher import PatchMatcher
from vlad_localization.matching.mutual import mutual_nearest_neighbours
from vlad_localization.matching.plot import draw_matches
from vlad_localization.matching.ransac import fit_homography, reprojection_threshold
from vlad_localization.matching.spatial import spatial_scores
from vlad_localization.model.geometry import VGG16_CONV5_3, BackboneGeometry

GRID = (6, 7)  # a 96 x 112 input for VGG16
SIZES, STRIDES = (2, 3), (1, 1)


def unit(*shape, seed=0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def matcher(kind="ransac", fusion="absolute", sizes=SIZES, weights=(0.3, 0.7)) -> PatchMatcher:
    cfg = MatchingConfig(matcher=kind, patch_weights=list(weights), fusion=fusion, ransac_seed=0)
    return PatchMatcher(cfg, sizes, [1] * len(sizes), VGG16_CONV5_3, GRID)


def query_and_candidates(m: PatchMatcher, k: int, dim=16, seed=0):
    query = {p: unit(m.num_patches(p), dim, seed=seed + p) for p in m.patch_sizes}
    cands = {p: unit(k, m.num_patches(p), dim, seed=seed + 100 + p) for p in m.patch_sizes}
    return query, cands


# ----------------------------------------------------------------------------- keypoints
def test_keypoints_follow_the_geometry_not_vgg_constants():
    geometry = BackboneGeometry(receptive_field=99.0, stride=8, padding=45.0)
    keypoints, indices = patch_keypoints(geometry, (10, 12), patch_size=3, patch_stride=1)
    assert keypoints.shape == (2, 8 * 10) and keypoints.dtype.kind == "i"
    # patch (row 1, col 2): cells x 2..4, y 1..3 -> ((2*8-45) + (4*8-45+98)) / 2 = 28, ((8-45) + (24-45+98)) / 2 = 20
    np.testing.assert_array_equal(keypoints[:, 1 * 10 + 2], [28, 20])
    np.testing.assert_array_equal(indices[:, 1 * 10 + 2], [2, 1])


def test_patch_stride_covers_every_pooled_patch_and_agrees_where_the_reference_is_right():
    ref_lm = pytest.importorskip("patchnetvlad.models.local_matcher")
    stride, size = 2, 5
    rows, cols = patch_grid_shape((30, 40), size, stride)
    keypoints, indices = patch_keypoints(VGG16_CONV5_3, (30, 40), size, stride)
    assert keypoints.shape[1] == rows * cols == 13 * 18  # the pooling's patch count
    np.testing.assert_array_equal(indices[:, cols + 1], [2, 2])  # patch (1, 1) starts at cell (2, 2)
    theirs, their_idx = ref_lm.calc_keypoint_centers_from_patches(
        {"imageresizeH": 480, "imageresizeW": 640}, size, size, stride, stride
    )
    # the reference visits top-left cells range(0, 13, 2) x range(0, 18, 2) and leaves the rest zero
    filled = len(range(0, rows, stride)) * len(range(0, cols, stride))
    assert not theirs[:, filled:].any()
    ours_at_those = [r * cols + c for r in range(0, (rows + 1) // 2) for c in range(0, (cols + 1) // 2)]
    np.testing.assert_array_equal(keypoints[:, ours_at_those], theirs[:, :filled])
    np.testing.assert_array_equal(indices[:, ours_at_those], their_idx[:, :filled])


def test_patch_larger_than_grid_is_an_actionable_error():
    with pytest.raises(ValueError, match="does not fit"):
        patch_keypoints(VGG16_CONV5_3, (4, 6), 5, 1)


def test_ransac_threshold_is_24px_for_vgg16():
    assert reprojection_threshold(VGG16_CONV5_3.stride, 1, 1.5) == 24.0
    assert matcher().thresholds[2] == 24.0


# ----------------------------------------------------------------------------- mutual matches
def test_mutual_matches_batched_equal_one_by_one():
    q, c = unit(30, 16), unit(5, 42, 16, seed=1)
    batched = mutual_nearest_neighbours(q, c)
    for k in range(5):
        single = mutual_nearest_neighbours(q, c[k : k + 1])
        np.testing.assert_array_equal(batched.pairs(k)[0], single.pairs(0)[0])
        np.testing.assert_array_equal(batched.pairs(k)[1], single.pairs(0)[1])


def test_mutual_matches_follow_the_reference_on_exact_ties_and_duplicates():
    """Duplicated candidate patches (exact distance ties: the first index wins) and candidate patches
    identical to query patches (dot products that round above 1 make the reference's sqrt NaN)
    give the official ``torch_nn`` nearest neighbours and mutual set."""
    torch_nn = pytest.importorskip("patchnetvlad.tools.patch_matcher").torch_nn
    q = unit(60, 512, seed=4)
    c = unit(1, 80, 512, seed=5)
    c[0, 10:40] = q[:30]  # identical patches
    c[0, 50:60] = c[0, 40:50] = q[30:40] * 0.999 + q[40:50] * 0.045  # duplicated near-copies
    c = F.normalize(c, dim=-1)
    c[0, 60:70] = c[0, 10:20]  # exact duplicates of identical patches
    fw, bw = torch_nn(q, c[0].t())
    ours = mutual_nearest_neighbours(q, c)
    np.testing.assert_array_equal(ours.nearest_query[0], fw.numpy())
    want = np.flatnonzero(bw.numpy()[fw.numpy()] == np.arange(80))
    np.testing.assert_array_equal(ours.pairs(0)[1], want)
    assert len(want) >= 20


def test_mutual_matches_are_bounded_by_memory_chunks(monkeypatch):
    import vlad_localization.matching.mutual as mutual

    q, c = unit(30, 16), unit(7, 30, 16, seed=1)
    whole = mutual_nearest_neighbours(q, c)
    monkeypatch.setattr(mutual, "_MAX_BLOCK_BYTES", {"cpu": 30 * 30 * 4 * 2, "other": 30 * 30 * 4 * 2})  # two per block
    chunked = mutual_nearest_neighbours(q, c)
    np.testing.assert_array_equal(whole.mutual, chunked.mutual)
    np.testing.assert_array_equal(whole.nearest_query, chunked.nearest_query)


def test_zero_candidates_and_empty_sets_give_no_matches():
    assert mutual_nearest_neighbours(unit(30, 16), unit(0, 30, 16)).mutual.shape == (0, 30)
    fit = fit_homography(np.zeros((0, 2)), np.zeros((0, 2)), 24.0, seed=0)
    assert fit.inliers == 0 and fit.homography is None
    # with no mutual match the spatial score is 0 (never NaN); note that non-empty descriptor sets
    # always have one mutual match: the globally closest pair
    assert spatial_scores(np.zeros((2, 0), int), np.zeros((2, 0), int), (5, 4), 30) == (0.0, 0.0)


def test_degenerate_keypoints_give_no_homography_instead_of_an_error():
    same_point = np.full((6, 2), 10.0)
    fit = fit_homography(same_point, same_point, 24.0, seed=0)
    assert fit.inliers == 0 and fit.homography is None


def test_mismatched_descriptors_are_actionable_errors():
    m = matcher()
    query, cands = query_and_candidates(m, 2)
    with pytest.raises(ValueError, match="dims"):
        m.score(query, {p: t[..., :8] for p, t in cands.items()})
    with pytest.raises(ValueError, match="same model and input size"):
        m.score(query, {p: t[:, :-1] for p, t in cands.items()})
    with pytest.raises(ValueError, match="lack patch size"):
        m.score({2: query[2]}, cands)
    with pytest.raises(ValueError, match="one patch weight per patch size"):
        matcher(weights=(1.0,))


# ----------------------------------------------------------------------------- scoring edge cases
@pytest.mark.parametrize("kind", ["ransac", "spatial"])
def test_identical_descriptors_score_exactly_one(kind):
    m = matcher(kind)
    query, _ = query_and_candidates(m, 1)
    result = m.score(query, {p: t[None] for p, t in query.items()})
    np.testing.assert_array_equal(result.per_size, [[1.0, 1.0]])
    assert result.fused[0] == 1.0
    if kind == "spatial":  # the derived maximum: every query patch matched with zero residual
        for s, p in enumerate(m.patch_sizes):
            xmax, ymax = m.anchors[p]
            assert result.raw[0, s] == -(xmax**2 + ymax**2)


def test_fewer_than_four_mutual_matches_give_ransac_zero_without_homography():
    m = matcher(sizes=(2,), weights=(1.0,))
    q = unit(m.num_patches(2), 16)
    cand = q[0].repeat(m.num_patches(2), 1)
    cand[1], cand[2] = q[1], q[2]  # exactly three mutual matches: patches 0, 1, 2
    assert mutual_nearest_neighbours(q, cand[None]).counts()[0] == 3
    result = m.score({2: q}, {2: cand[None]})
    assert result.raw[0, 0] == 0 and result.per_size[0, 0] == 0 and result.inliers[0, 0] == 0
    assert result.correspondences[0][0].homography is None
    assert result.correspondences[0][0].query_keypoints.shape == (0, 2)
    spatial = matcher("spatial", sizes=(2,), weights=(1.0,)).score({2: q}, {2: cand[None]})
    assert spatial.inliers[0, 0] == 3 and 0 < spatial.per_size[0, 0] < 1


@pytest.mark.parametrize("kind", ["ransac", "spatial"])
@pytest.mark.parametrize("fusion", ["absolute", "reference"])
def test_one_candidate_and_identical_candidates_give_finite_scores(kind, fusion):
    m = matcher(kind, fusion)
    query, cands = query_and_candidates(m, 1)
    one = m.score(query, cands)
    assert np.isfinite(one.fused).all() and one.order.tolist() == [0]
    same = m.score(query, {p: t.repeat(4, 1, 1) for p, t in cands.items()})
    assert np.isfinite(same.fused).all() and np.isfinite(same.raw).all()
    assert np.all(same.fused == same.fused[0])
    assert sorted(same.order.tolist()) == [0, 1, 2, 3]
    if fusion == "absolute":
        assert same.order.tolist() == [0, 1, 2, 3]  # ties keep the global order


def test_grid_with_a_single_patch_position_does_not_divide_by_zero():
    m = PatchMatcher(MatchingConfig(matcher="spatial", patch_weights=[1.0]), [5], [1], VGG16_CONV5_3, (5, 5))
    q = unit(1, 16)
    result = m.score({5: q}, {5: unit(3, 1, 16, seed=4)})
    np.testing.assert_array_equal(result.per_size, [[1.0], [1.0], [1.0]])  # one patch, always matched


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 10_000), kind=st.sampled_from(["ransac", "spatial"]))
def test_absolute_scores_lie_in_unit_interval(k, seed, kind):
    m = matcher(kind)
    query, cands = query_and_candidates(m, k, seed=seed)
    result = m.score(query, cands)
    for arr in (result.per_size, result.fused):
        assert np.isfinite(arr).all() and (arr >= 0).all() and (arr <= 1).all()
    assert (result.raw <= 0).all()
    np.testing.assert_allclose(result.fused, result.per_size @ np.array([0.3, 0.7]))
    assert sorted(result.order.tolist()) == list(range(k))
    assert all(np.diff(result.fused[result.order]) <= 0)


# ----------------------------------------------------------------------------- fusion
def test_reference_fusion_matches_normalise_func_and_guards_constant_columns():
    ref_lm = pytest.importorskip("patchnetvlad.models.local_matcher")
    raw = -np.random.default_rng(0).random((9, 3))
    weights = np.array([0.45, 0.15, 0.4])
    np.testing.assert_array_equal(reference_fusion(raw, weights), ref_lm.normalise_func(raw, 3, weights))
    np.testing.assert_array_equal(reference_order(raw, weights), np.argsort(ref_lm.normalise_func(raw, 3, weights)))
    raw[:, 1] = -0.25  # a constant size: the reference gives NaN, we drop that size
    expected = ref_lm.normalise_func(raw[:, [0, 2]], 2, weights[[0, 2]])
    np.testing.assert_array_equal(reference_fusion(raw, weights), expected)
    assert np.isfinite(reference_fusion(raw[:1], weights)).all()


def test_absolute_fusion_normalises_weights():
    per_size = np.array([[1.0, 0.0, 0.5]])
    np.testing.assert_allclose(absolute_fusion(per_size, [0.45, 0.15, 0.4]), [0.45 + 0.2])
    np.testing.assert_allclose(absolute_fusion(per_size, [9, 3, 8]), [0.45 + 0.2])
    with pytest.raises(ValueError, match="not all zero"):
        absolute_fusion(per_size, [0, 0, 0])


def test_from_config_uses_the_preset():
    cfg = load_config("performance")
    m = PatchMatcher.from_config(cfg, VGG16_CONV5_3, (30, 40))
    assert m.patch_sizes == (2, 5, 8) and [m.num_patches(p) for p in m.patch_sizes] == [1131, 936, 759]
    assert m.image_hw == (480, 640)


# ----------------------------------------------------------------------------- plot
def test_draw_matches_is_side_by_side_in_the_network_frame():
    query = np.zeros((60, 80, 3), np.uint8)
    ref = np.full((120, 160, 3), 40, np.uint8)
    picture = draw_matches(query, ref, np.array([[10.0, 10.0], [50, 40]]), np.array([[20.0, 30.0], [70, 5]]), image_hw=(48, 64))
    assert picture.shape == (48, 128, 3) and picture.dtype == np.uint8
    green = (picture[..., 1] > 200) & (picture[..., 0] < 100)
    assert green[:, :64].any() and green[:, 64:].any()
    with pytest.raises(ValueError, match="row by row"):
        draw_matches(query, query, np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="image_hw"):
        draw_matches(query, ref, np.zeros((0, 2)), np.zeros((0, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_equal_cpu_matches():
    q, c = unit(300, 128), unit(10, 300, 128, seed=1)
    cpu = mutual_nearest_neighbours(q, c)
    gpu = mutual_nearest_neighbours(q.cuda(), c.cuda())
    assert (cpu.mutual == gpu.mutual).mean() > 0.999
