"""The batched torch RANSAC (``matching.batched_ransac``) against OpenCV's findHomography.

Real problems: the mutual patch matches of revisit and GardensPoint queries against every encoded
image (off-the-shelf encoder at 240x320, patch sizes 2, 5, 8; ``test_matching_support``). OpenCV's
RANSAC draws from a fixed internal seed (cv2.setRNGSeed has no effect on it), so its run-to-run
spread is measured by presenting the same matches in other orders.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_matching_support import GARDENS_DAY, GARDENS_NIGHT, NAMES, PATCH_SIZES, REVISITS, STRIDES, TOKYO
from test_matching_support import PERFORMANCE_WEIGHTS as WEIGHTS
from test_matching_support import real_descriptors

import vlad_localization.matching.batched_ransac as batched_ransac
from vlad_localization.config import MatchingConfig
from vlad_localization.matching.batched_ransac import batched_homographies
from vlad_localization.matching.matcher import PatchMatcher
from vlad_localization.matching.mutual import mutual_nearest_neighbours
from vlad_localization.matching.ransac import fit_homography
from vlad_localization.model.geometry import VGG16_CONV5_3

QUERIES = [q for q, _ in REVISITS[:3]] + GARDENS_DAY[:1]
RUNS = 4  # OpenCV runs (input orders) that measure RANSAC's own spread


def _matcher(grid, backend: str, fusion: str = "absolute") -> PatchMatcher:
    cfg = MatchingConfig(matcher="ransac", patch_weights=list(WEIGHTS), fusion=fusion, ransac_seed=0,
                         ransac_backend=backend)
    return PatchMatcher(cfg, PATCH_SIZES, STRIDES, VGG16_CONV5_3, grid)


@pytest.fixture(scope="module")
def encoded(speed_checkpoint, datasets_dir):
    return real_descriptors(speed_checkpoint, datasets_dir)[1]


@pytest.fixture(scope="module")
def problems(encoded):
    """(query keypoints, candidate keypoints, threshold) of every query x image x patch size."""
    m = _matcher(encoded.grid, "batched")
    out = []
    for name in QUERIES:
        q = NAMES.index(name)
        for size in PATCH_SIZES:
            matches = mutual_nearest_neighbours(encoded.patches[size][q], encoded.patches[size])
            for k in range(len(NAMES)):
                q_idx, c_idx = matches.pairs(k)
                kp = m.keypoints[size]
                out.append((kp[:, q_idx].T.astype(np.float64), kp[:, c_idx].T.astype(np.float64), m.thresholds[size]))
    return out


def _opencv_counts(problems, order_seed: int | None) -> np.ndarray:
    counts = []
    for q, c, t in problems:
        order = np.arange(len(q)) if order_seed is None else np.random.default_rng(order_seed).permutation(len(q))
        counts.append(fit_homography(q[order], c[order], t).inliers)
    return np.array(counts)


def _batched_counts(problems, seed: int, device="cpu") -> np.ndarray:
    q, c, t = zip(*problems)
    return np.array([f.inliers for f in batched_homographies(list(q), list(c), list(t), seed, device)])


def test_inlier_counts_agree_with_opencv_within_its_own_spread(problems):
    opencv = np.stack([_opencv_counts(problems, None)] + [_opencv_counts(problems, s) for s in range(1, RUNS)])
    ours = np.stack([_batched_counts(problems, s) for s in range(2)])
    fitted = opencv.max(axis=0) >= 8  # problems with a homography worth the name
    assert fitted.sum() >= 50
    # RANSAC's own spread: how far OpenCV runs land from OpenCV's first run
    spread = np.abs(opencv[1:] - opencv[0]).mean()
    ours_off = np.abs(ours - opencv[0]).mean()
    assert ours_off <= 1.5 * spread + 0.25, (ours_off, spread)
    # and no systematic bias: the mean count of every batched run is within OpenCV's run-to-run range
    assert opencv.mean(axis=1).min() - 0.5 <= ours.mean(axis=1).min()
    assert ours.mean(axis=1).max() <= opencv.mean(axis=1).max() + 0.5
    # per problem, the batched count lies within the range of OpenCV's runs (+/- 2) almost everywhere
    inside = (ours >= opencv.min(axis=0) - 2) & (ours <= opencv.max(axis=0) + 2)
    assert inside[:, fitted].mean() >= 0.95


def test_true_pair_wins_as_often_as_with_opencv(encoded):
    """Revisits and GardensPoint day/night pairs ranked against every image: the re-ranking with the
    batched RANSAC puts the true reference first as often as OpenCV's does."""
    pairs = list(REVISITS) + list(zip(GARDENS_DAY, GARDENS_NIGHT))
    wins = {}
    for backend in ("opencv", "batched"):
        m = _matcher(encoded.grid, backend)
        won = 0
        for query_name, ref_name in pairs:
            q, r = NAMES.index(query_name), NAMES.index(ref_name)
            others = [k for k in range(len(NAMES)) if k not in (q, NAMES.index(TOKYO[0]), NAMES.index(TOKYO[1]))]
            result = m.score({p: encoded.patches[p][q] for p in PATCH_SIZES}, {p: encoded.patches[p][others] for p in PATCH_SIZES})
            won += int(others[int(result.order[0])] == r)
        wins[backend] = won
    assert wins["opencv"] >= len(REVISITS)  # the comparison means something
    assert wins["batched"] >= wins["opencv"], wins


def test_matcher_uses_the_backend_it_names(encoded):
    batched, opencv = _matcher(encoded.grid, "batched"), _matcher(encoded.grid, "opencv")
    assert batched.ransac_backend(torch.device("cpu")) == "batched"
    assert opencv.ransac_backend(torch.device("cpu")) == "opencv"
    # the reference fusion stays the official re-ranking, whatever the backend
    assert _matcher(encoded.grid, "batched", "reference").ransac_backend(torch.device("cpu")) == "opencv"
    assert _matcher(encoded.grid, "auto").ransac_backend(torch.device("cuda")) == "batched"
    q = NAMES.index(REVISITS[0][0])
    query = {p: encoded.patches[p][q] for p in PATCH_SIZES}
    cands = {p: encoded.patches[p][:8] for p in PATCH_SIZES}
    result = batched.score(query, cands)
    direct = []
    for p in PATCH_SIZES:
        matches = mutual_nearest_neighbours(query[p], cands[p])
        kp = batched.keypoints[p]
        direct += [(kp[:, qi].T.astype(float), kp[:, ci].T.astype(float), batched.thresholds[p])
                   for qi, ci in (matches.pairs(k) for k in range(8))]
    fits = batched_homographies(*map(list, zip(*direct)), seed=0)
    np.testing.assert_array_equal(result.inliers.T.ravel(), [f.inliers for f in fits])


def test_seeded_results_do_not_depend_on_round_size(problems, monkeypatch):
    subset = problems[:: max(1, len(problems) // 60)]
    first = _batched_counts(subset, 3)
    np.testing.assert_array_equal(first, _batched_counts(subset, 3))
    monkeypatch.setitem(batched_ransac._MAX_BLOCK_BYTES, "cpu", 1)  # smallest rounds
    np.testing.assert_array_equal(first, _batched_counts(subset, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
def test_cuda_path_equals_cpu_path(problems):
    q, c, t = zip(*problems)
    on_cpu = batched_homographies(list(q), list(c), list(t), 0, "cpu")
    on_gpu = batched_homographies(list(q), list(c), list(t), 0, "cuda")
    for a, b in zip(on_cpu, on_gpu):
        np.testing.assert_array_equal(a.query_keypoints, b.query_keypoints)
        np.testing.assert_array_equal(a.candidate_keypoints, b.candidate_keypoints)
        if a.homography is not None:
            np.testing.assert_allclose(a.homography, b.homography, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- synthetic and degenerate inputs


def _planar_matches(seed: int = 0, num: int = 300, inlier_fraction: float = 0.4):
    rng = np.random.default_rng(seed)
    cand = rng.integers(0, 640, (num, 2)).astype(np.float64)
    truth = np.array([[1.05, 0.05, 10.0], [0.02, 0.95, -5.0], [1e-4, 2e-5, 1.0]])
    query = cv2.perspectiveTransform(cand.reshape(-1, 1, 2), truth).reshape(-1, 2)
    outliers = rng.random(num) > inlier_fraction
    query[outliers] = rng.integers(0, 640, (outliers.sum(), 2))
    return query, cand, truth, ~outliers


def test_recovers_a_planar_homography_among_outliers():
    query, cand, truth, inliers = _planar_matches()
    fit = batched_homographies([query], [cand], 8.0, seed=0)[0]
    assert fit.inliers >= inliers.sum()  # every true inlier (outliers may fall within 8 px by chance)
    assert fit.inliers <= inliers.sum() + 3
    np.testing.assert_allclose(fit.homography / fit.homography[2, 2], truth, rtol=1e-4, atol=1e-6)
    assert fit.inliers == fit_homography(query, cand, 8.0).inliers


@pytest.mark.parametrize(
    "points",
    [
        np.zeros((0, 2)),
        np.array([[10.0, 10.0], [50.0, 20.0], [30.0, 80.0]]),  # fewer than four matches
        np.array([[float(i), 0.0] for i in range(0, 100, 10)]),  # a horizontal line
        np.array([[float(i), 2.0 * i + 3.0] for i in range(0, 100, 7)]),  # a diagonal line
        np.array([[float(i), 5.0] for i in range(4)]),  # exactly four without spread along y
        np.full((12, 2), 7.0),  # all identical
    ],
)
def test_degenerate_inputs_give_no_fit(points):
    fit = batched_homographies([points + 5.0], [points], 24.0, seed=0)[0]
    assert fit.inliers == 0 and fit.homography is None
    assert fit_homography(points + 5.0, points, 24.0).inliers == 0  # as OpenCV


def test_four_matches_in_general_position_are_all_inliers():
    square = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]])
    fit = batched_homographies([square * 1.2 + 3.0], [square], 24.0, seed=0)[0]
    assert fit.inliers == 4
    np.testing.assert_allclose(fit.homography / fit.homography[2, 2], [[1.2, 0, 3], [0, 1.2, 3], [0, 0, 1]], atol=1e-9)


@pytest.mark.parametrize("shift", [0.0, 7.0])
def test_exactly_four_matches_count_as_findhomography_counts_them(shift):
    """findHomography takes four matches as the model without RANSAC (all four inliers) unless a
    point set has no spread along x or y; four collinear points on a diagonal thus count 4, with
    no crash, as on the official path."""
    cases = [
        np.array([[10.0, 10.0], [60.0, 15.0], [70.0, 90.0], [5.0, 70.0]]),
        np.array([[float(i), float(i)] for i in range(0, 40, 10)]),  # collinear, diagonal
        np.array([[float(i), 3.0] for i in range(4)]),  # collinear, horizontal: no y spread
        np.full((4, 2), 2.0),  # identical
    ]
    ours = batched_homographies([c + shift for c in cases], cases, 24.0, seed=0)
    for case, fit in zip(cases, ours):
        assert fit.inliers == fit_homography(case + shift, case, 24.0).inliers
    assert [f.inliers for f in ours] == [4, 4, 0, 0]


def test_mixed_batch_solves_each_problem_alone():
    """Degenerate and solvable problems in one batch: each gets what it gets alone."""
    query, cand, _, _ = _planar_matches(seed=1)
    line = np.array([[float(i), 0.0] for i in range(20)])
    fits = batched_homographies([query, line, query[:3]], [cand, line, cand[:3]], [8.0, 24.0, 8.0], seed=5)
    assert fits[0].inliers == batched_homographies([query], [cand], 8.0, seed=5)[0].inliers > 0
    assert fits[1].inliers == fits[2].inliers == 0
