"""Patch matching on real images with the off-the-shelf encoder (ImageNet VGG16 + k-means NetVLAD
+ WPCA fitted on a dozen images; fixtures ``speed_encoder`` / ``speed_checkpoint``, 240x320 input).

Such an untrained model is a weak place recogniser, so assertions compare a revisit with many
different places, or aggregate over the 10 GardensPoint day/night pairs, rather than demanding the
right answer at rank 1 everywhere.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_matching_support import GARDENS_DAY, GARDENS_NIGHT, NAMES, PERFORMANCE_WEIGHTS, REVISITS, TOKYO
from test_matching_support import multiscale_encoder, real_descriptors

from vlad_localization.config import MatchingConfig
from vlad_localization.images.io import load_rgb
from vlad_localization.matching.matcher import PatchMatcher
from vlad_localization.matching.plot import draw_matches
from vlad_localization.model.geometry import VGG16_CONV5_3

PRESETS = {"speed": ((5,), (1.0,)), "performance": ((2, 5, 8), PERFORMANCE_WEIGHTS)}


@pytest.fixture(scope="module")
def encoded(speed_checkpoint, datasets_dir):
    """Descriptors of all test images (patch sizes 2, 5, 8 at 240x320), encoded once."""
    return real_descriptors(speed_checkpoint, datasets_dir)[1]


def _matcher(grid, kind: str, preset: str = "speed") -> PatchMatcher:
    sizes, weights = PRESETS[preset]
    cfg = MatchingConfig(matcher=kind, patch_weights=list(weights), ransac_seed=0)
    return PatchMatcher(cfg, sizes, [1] * len(sizes), VGG16_CONV5_3, grid)


def _scores(matcher: PatchMatcher, desc, query: int, candidates=None) -> np.ndarray:
    """Absolute scores of image ``query`` against ``candidates`` (default: every encoded image)."""
    rows = slice(None) if candidates is None else list(candidates)
    patches = {p: desc.patches[p] for p in matcher.patch_sizes}
    return matcher.score({p: t[query] for p, t in patches.items()}, {p: t[rows] for p, t in patches.items()}).fused


@pytest.mark.parametrize("preset", ["speed", "performance"])
@pytest.mark.parametrize("kind", ["ransac", "spatial"])
def test_revisits_beat_every_different_place(encoded, kind, preset):
    m = _matcher(encoded.grid, kind, preset)
    for query_name, ref_name in REVISITS:
        q, r = NAMES.index(query_name), NAMES.index(ref_name)
        scores = _scores(m, encoded, q)
        others = np.delete(scores, [q, r, NAMES.index(TOKYO[0]), NAMES.index(TOKYO[1])])
        assert scores[r] > others.max(), f"{query_name} vs {ref_name}: {scores[r]:.3f} <= {others.max():.3f}"
        assert scores[q] == 1.0  # the query itself


@pytest.mark.parametrize("preset", ["speed", "performance"])
@pytest.mark.parametrize("kind", ["ransac", "spatial"])
def test_gardens_point_day_night_pairs_score_higher_than_different_places(encoded, kind, preset):
    m = _matcher(encoded.grid, kind, preset)
    night = [NAMES.index(n) for n in GARDENS_NIGHT]
    day_vs_night = np.stack([_scores(m, encoded, NAMES.index(n), night) for n in GARDENS_DAY])
    same = np.diag(day_vs_night)
    different = day_vs_night[~np.eye(10, dtype=bool)]
    assert same.mean() > 1.2 * different.mean()
    assert (same > np.median(different)).sum() >= 6


def test_reranking_all_candidates_at_once_equals_one_pair_at_a_time(encoded):
    m = _matcher(encoded.grid, "ransac", "performance")
    batched = m.score({p: encoded.patches[p][0] for p in m.patch_sizes}, encoded.patches)
    for k in (0, 10, 22):
        pair = m.pair(encoded.select(0), encoded.select(k))
        np.testing.assert_array_equal(pair.inliers[0], batched.inliers[k])
        assert pair.fused[0] == pytest.approx(batched.fused[k], rel=1e-12)


@pytest.mark.parametrize("fusion", ["absolute", "fused"])
def test_scoring_on_several_threads_gives_the_serial_result(encoded, fusion):
    """matching.workers only spreads the candidates' RANSAC / spatial scoring over threads: every
    score, inlier set and the order are those of the serial loop."""
    from vlad_localization.config import load_config

    sizes, weights = PRESETS["performance"]
    model = load_config("speed").matching.fusion_model
    results = []
    for workers in (1, 4):
        cfg = MatchingConfig(matcher="ransac", patch_weights=list(weights), fusion=fusion, fusion_model=model,
                             workers=workers)
        m = PatchMatcher(cfg, sizes, [1] * len(sizes), VGG16_CONV5_3, encoded.grid)
        similarity = np.linspace(0.9, 0.1, len(NAMES))
        results.append(m.score({p: encoded.patches[p][0] for p in sizes}, encoded.patches, similarity))
    serial, threaded = results
    for name in ("per_size", "fused", "raw", "inliers", "order"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(threaded, name), err_msg=name)
    if fusion == "fused":
        np.testing.assert_array_equal(serial.probability, threaded.probability)
        np.testing.assert_array_equal(serial.evidence["spatial"], threaded.evidence["spatial"])
    for k in range(len(NAMES)):
        for a, b in zip(serial.matched_keypoints(k), threaded.matched_keypoints(k)):
            np.testing.assert_array_equal(a, b)
    assert serial.inliers.sum() > 0


def test_graf_homography_agrees_with_ground_truth(encoded, datasets_dir):
    """graf3 is the query, graf1 the reference: our homography maps reference pixels to query
    pixels, the direction of H1to3p, once both are taken to the network-input frame."""
    m = _matcher(encoded.grid, "ransac")
    q, r = NAMES.index("multiview_pairs/graf3.png"), NAMES.index("multiview_pairs/graf1.png")
    result = m.pair(encoded.select(q), encoded.select(r))
    corr = result.correspondences[0][0]
    assert corr.homography is not None and result.inliers[0, 0] >= 8
    storage = cv2.FileStorage(str(datasets_dir / "multiview_pairs" / "H1to3p.xml"), cv2.FILE_STORAGE_READ)
    h_gt = storage.getNode("H13").mat()
    original_h, original_w = load_rgb(datasets_dir / "multiview_pairs" / "graf1.png").shape[:2]
    net_h, net_w = encoded.image_size
    scale = np.diag([net_w / original_w, net_h / original_h, 1.0])
    h_gt_net = scale @ h_gt @ np.linalg.inv(scale)

    def project(h, points):
        p = np.c_[points, np.ones(len(points))] @ h.T
        return p[:, :2] / p[:, 2:]

    estimated = project(corr.homography, corr.candidate_keypoints)
    truth = project(h_gt_net, corr.candidate_keypoints)
    threshold = m.thresholds[5]
    assert np.linalg.norm(estimated - truth, axis=1).max() <= threshold
    assert np.linalg.norm(corr.query_keypoints - truth, axis=1).max() <= threshold


def test_tokyo_pair_at_full_resolution(speed_checkpoint, datasets_dir):
    """At 640x480 (the official input size) the Tokyo 24/7 pair has more spatially consistent
    patch matches than the query with different places (at 320x240 the untrained model fails)."""
    encoder = multiscale_encoder(speed_checkpoint, image_hw=(480, 640))
    names = [*TOKYO, "gardenspoint_10/ref/3.jpg", "campus_loop_72/image_36.png"]
    desc = encoder.encode([load_rgb(datasets_dir / n) for n in names])
    scores = _scores(_matcher(desc.grid, "spatial"), desc, 0)
    assert scores[0] == 1.0 and scores[1] > 1.3 * scores[2:].max()
    global_sim = desc.global_desc[0] @ desc.global_desc.T
    assert global_sim[1] > global_sim[2:].max()


def test_plot_of_a_revisit(encoded, datasets_dir):
    m = _matcher(encoded.grid, "ransac", "performance")
    q, r = NAMES.index("euroc_loop_pairs/left_img_1.png"), NAMES.index("euroc_loop_pairs/left_img_0.png")
    result = m.pair(encoded.select(q), encoded.select(r))
    query_kp, ref_kp = result.matched_keypoints(0)
    assert len(query_kp) == result.inliers.sum() >= 8 and query_kp.shape[1] == 2
    picture = draw_matches(load_rgb(datasets_dir / NAMES[q]), load_rgb(datasets_dir / NAMES[r]), query_kp, ref_kp,
                           image_hw=encoded.image_size)
    assert picture.shape == (encoded.image_size[0], 2 * encoded.image_size[1], 3)
