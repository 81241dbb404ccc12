"""Geometric verification on synthetic geometry: camera model, estimators, covariance calibration,
statuses, config section, depth sources (no model, no data)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vlad_localization.config import ConfigError, config_from_dict
from vlad_localization.verification import PinholeCamera, RelativePose, View, estimate_pose
from vlad_localization.verification.relative_pose import quaternion_xyzw

CAMERA = PinholeCamera(458.654, 457.296, 367.215, 248.375, (-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05))
HW = (480, 752)


def verification_cfg(**values):
    return config_from_dict({"verification": values}).verification


def scene(seed=0, n=300, planar=False):
    """3-D points in the match camera's frame, a query pose (X_q = R X_m + t) and raw pixels in both
    images (EuRoC left camera, with its distortion)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1.2, 1.2, (n, 2))
    depth = np.full(n, 3.0) if planar else rng.uniform(1.5, 6.0, n)
    points = np.column_stack([xy * depth[:, None] / 2, depth])
    rvec, tvec = np.array([0.05, -0.30, 0.02]), np.array([0.35, -0.05, -0.12])

    def project(pts, r, t):
        return cv2.projectPoints(pts, r, t, CAMERA.matrix, CAMERA.dist_coeffs)[0].reshape(-1, 2)

    return points, cv2.Rodrigues(rvec)[0], tvec, project(points, rvec, tvec), project(points, np.zeros(3), np.zeros(3))


def angle_deg(r1, r2):
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(r1.T @ r2)[0])))


def test_camera_normalizes_distorted_pixels_and_checks_its_intrinsics():
    points = np.array([[0.3, -0.2, 1.0], [-0.5, 0.4, 2.0]])
    pixels = cv2.projectPoints(points, np.zeros(3), np.zeros(3), CAMERA.matrix, CAMERA.dist_coeffs)[0].reshape(-1, 2)
    np.testing.assert_allclose(CAMERA.normalized(pixels), points[:, :2] / points[:, 2:], atol=1e-6)
    assert PinholeCamera.from_list([500, 500, 320, 240]).distortion == (0.0, 0.0, 0.0, 0.0)
    for bad in ([500, 500, 320], [500, -1, 320, 240], [500, 500, 320, 240, 0.1]):
        with pytest.raises(ValueError, match="intrinsics"):
            PinholeCamera.from_list(bad)
    half = CAMERA.scaled(0.5, 0.5)
    np.testing.assert_allclose(half.normalized(pixels / 2 - 0.0), CAMERA.normalized(pixels), atol=1e-6)


def test_quaternion_matches_rotation():
    rot = cv2.Rodrigues(np.array([0.1, -0.4, 0.25]))[0]
    x, y, z, w = quaternion_xyzw(rot)
    expect = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    np.testing.assert_allclose(expect, rot, atol=1e-12)
    assert np.allclose(quaternion_xyzw(np.eye(3)), [0, 0, 0, 1])


def test_monocular_and_metric_poses_recover_the_motion():
    points, rot, trans, query_px, match_px = scene()
    rng = np.random.default_rng(1)
    query_px = query_px + rng.normal(0, 0.3, query_px.shape)
    cfg = verification_cfg()
    mono = estimate_pose(query_px, match_px, View(CAMERA, HW), View(CAMERA, HW), cfg)
    assert mono.status == "ok" and not mono.metric and mono.inliers > 250
    assert angle_deg(mono.rotation, rot) < 0.3
    assert np.degrees(np.arccos(mono.translation @ trans / np.linalg.norm(trans))) < 2.0
    assert np.linalg.norm(mono.translation) == pytest.approx(1.0)
    depth = points[:, 2].copy()
    depth[::3] = np.nan  # unknown depth at a third of the keypoints
    metric = estimate_pose(query_px, match_px, View(CAMERA, HW), View(CAMERA, HW, depth=lambda p: depth), cfg)
    assert metric.status == "ok" and metric.metric and metric.inliers == pytest.approx(200, abs=5)
    assert angle_deg(metric.rotation, rot) < 0.2 and np.linalg.norm(metric.translation - trans) < 0.01
    # depth on the query side instead: the same pose, inverted internally
    query_depth = (points @ rot.T + trans)[:, 2]
    other = estimate_pose(query_px, match_px, View(CAMERA, HW, depth=lambda p: query_depth), View(CAMERA, HW), cfg)
    assert other.metric and np.linalg.norm(other.translation - trans) < 0.01
    # too few depths: falls back to the monocular estimate
    sparse = np.full(len(points), np.nan)
    sparse[:10] = points[:10, 2]
    fallback = estimate_pose(query_px, match_px, View(CAMERA, HW), View(CAMERA, HW, depth=lambda p: sparse), cfg)
    assert fallback.status == "ok" and not fallback.metric
    # too few on the match side but depth on the query side: metric from the query side
    both = estimate_pose(query_px, match_px, View(CAMERA, HW, depth=lambda p: query_depth),
                         View(CAMERA, HW, depth=lambda p: sparse), cfg)
    assert both.metric and np.linalg.norm(both.translation - trans) < 0.01


def spread_ratios(monocular: bool, draws: int = 40):
    """Predicted / empirical standard deviations over ``draws`` noisy estimates (0.5 px in the query
    image): tx, ty, tz, rx, ry, rz (metric) or the two translation directions normal to t, rx, ry, rz."""
    points, rot, trans, query_px, match_px = scene(n=150)
    # the keypoint-noise covariance alone (no floor): that is what Monte Carlo measures
    cfg, depth = verification_cfg(covariance_floor_rotation_deg=0.0, covariance_floor_translation=0.0), points[:, 2]
    match = View(CAMERA, HW) if monocular else View(CAMERA, HW, depth=lambda p: depth)
    rng = np.random.default_rng(2)
    truth = trans / np.linalg.norm(trans) if monocular else trans
    def normal(t):  # two unit vectors normal to t
        return np.linalg.svd(t[None])[2][1:]

    axes = normal(truth) if monocular else np.eye(3)
    deltas, variances = [], []
    for _ in range(draws):
        noisy = query_px + rng.normal(0, 0.5, query_px.shape)
        pose = estimate_pose(noisy, match_px, View(CAMERA, HW), match, cfg)
        assert pose.status == "ok" and pose.metric is not monocular
        dr = cv2.Rodrigues(pose.rotation @ rot.T)[0].ravel()  # left perturbation, as documented
        deltas.append(np.concatenate([axes @ (pose.translation - truth), dr]))
        own = normal(pose.translation) if monocular else axes  # free of the unknown-scale variance along t
        cov_t = own @ pose.covariance[:3, :3] @ own.T
        variances.append(np.concatenate([np.diag(cov_t), np.diag(pose.covariance)[3:]]))
    return np.sqrt(np.median(variances, axis=0)) / np.std(deltas, axis=0)


@pytest.mark.parametrize("monocular", [False, True], ids=["metric", "monocular"])
def test_covariance_matches_the_spread_of_repeated_estimates(monocular):
    """Gauss-Newton covariance vs Monte Carlo (40 draws, EuRoC distortion): the predicted standard
    deviations agree with the empirical ones within a factor 1.5 on every observable axis."""
    ratios = spread_ratios(monocular)
    assert np.all(ratios < 1.5) and np.all(ratios > 1 / 1.5), ratios


def test_rejections_carry_their_reason():
    cfg = verification_cfg(min_inliers=20)
    points, _, _, query_px, match_px = scene(n=300)
    views = View(CAMERA, HW), View(CAMERA, HW)
    assert estimate_pose(query_px[:10], match_px[:10], *views, cfg).status == "too_few_matches"
    rng = np.random.default_rng(3)
    random_px = rng.uniform([0, 0], [752, 480], query_px.shape)
    assert estimate_pose(random_px, match_px, *views, cfg).status == "too_few_inliers"
    _, _, _, plane_q, plane_m = scene(planar=True)
    planar = estimate_pose(plane_q, plane_m, *views, cfg)
    assert planar.status == "planar"
    rotation_only = cv2.projectPoints(points, np.array([0.0, 0.2, 0.0]), np.zeros(3), CAMERA.matrix,
                                      CAMERA.dist_coeffs)[0].reshape(-1, 2)
    assert estimate_pose(rotation_only, match_px, *views, cfg).status == "planar"
    no_depth = estimate_pose(query_px, match_px, View(CAMERA, HW), View(CAMERA, HW, depth=lambda p: p[:, 0] * np.nan),
                             cfg)
    assert no_depth.status == "ok" and not no_depth.metric
    jumbled = points[:, 2] * np.random.default_rng(4).uniform(0.5, 1.5, len(points))  # depth unrelated to matches
    assert estimate_pose(query_px, match_px, View(CAMERA, HW), View(CAMERA, HW, depth=lambda p: jumbled),
                         cfg).status == "inconsistent_depth"
    behind = estimate_pose(query_px, match_px, View(CAMERA, HW), View(CAMERA, HW, depth=lambda p: -points[:, 2]), cfg)
    assert behind.status == "ok" and not behind.metric  # negative depths are no depths
    out = planar.to_json()
    assert set(out) == {"R", "t", "metric", "inliers", "covariance", "status", "refine", "match_camera"}
    assert out["R"] == [0, 0, 0, 1] and out["covariance"][0] == -1 and len(out["covariance"]) == 36
    assert out["refine"] is None and out["match_camera"] is None  # estimate_pose alone: neither is known


def test_to_json_layout():
    pose = RelativePose(cv2.Rodrigues(np.array([0.0, 0.0, np.pi / 2]))[0], np.array([1.0, 2.0, 3.0]), True, 42,
                        np.diag(np.arange(1.0, 7.0)), "ok")
    out = pose.to_json()
    np.testing.assert_allclose(out["R"], [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    assert out["t"] == [1, 2, 3] and out["metric"] is True and out["inliers"] == 42
    assert out["covariance"][0] == 1 and out["covariance"][7] == 2 and out["covariance"][35] == 6
    with pytest.raises(ValueError, match="unknown rejection"):
        RelativePose.rejected("because")


def test_verification_config_section():
    cfg = config_from_dict({"verification": {"intrinsics": [458, 457, 367, 248], "min_inliers": 30}})
    assert cfg.verification.intrinsics == [458, 457, 367, 248] and cfg.verification.min_inliers == 30
    for bad, message in (({"intrinsics": [1, 2, 3]}, "intrinsics"), ({"intrinsics": [0, 1, 2, 3]}, "positive"),
                         ({"refine": "orb"}, "sift | none"), ({"min_inliers": 2}, "min_inliers"),
                         ({"ransac_confidence": 1.0}, "ransac_confidence"), ({"intrinsics": "458,457"}, "list"),
                         ({"max_depth_m": 0}, "max_depth_m")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"verification": bad})


def test_depth_from_a_registered_depth_image_and_from_stored_keypoints():
    from vlad_localization.verification import depth_at, depth_lookup

    mm = np.tile(np.arange(1000, 1752, dtype=np.uint16), (480, 1))  # depth grows 1 mm per column
    mm[100:110, 200:210] = 0  # holes are unknown, not zero depth
    points = np.array([[10.0, 10.0], [205.0, 105.0], [203.0, 100.0], [-1.0, 5.0], [751.4, 479.4]])
    depth = depth_at(mm, points, 0.001, 20.0)
    assert depth[0] == pytest.approx(1.010) and np.isnan(depth[1]) and np.isnan(depth[3])
    assert depth[2] == pytest.approx(1.2035, abs=0.002)  # the median of the valid pixels around it
    assert depth[4] == pytest.approx(1.750, abs=0.002)
    assert np.isnan(depth_at(mm, points[:1], 0.001, 1.0)[0])  # beyond max_depth_m
    metres = depth_at(mm.astype(np.float32) / 1000, points[:1], 0.001, 20.0)  # float images are metres
    assert metres[0] == pytest.approx(1.010)
    with pytest.raises(ValueError, match="one channel"):
        depth_at(np.zeros((4, 4, 3)), points, 0.001, 20.0)
    lookup = depth_lookup(np.array([[10.0, 20.0], [30.0, 40.0]]), np.array([1.5, 2.5]))
    np.testing.assert_array_equal(lookup(np.array([[30.2, 40.1], [10.0, 20.0], [50.0, 50.0]]))[:2], [2.5, 1.5])
    assert np.isnan(lookup(np.array([[50.0, 50.0]]))[0])


def test_the_covariance_floor_is_added_on_every_axis():
    points, _, _, query_px, match_px = scene(n=150)
    views = View(CAMERA, HW), View(CAMERA, HW, depth=lambda p: points[:, 2])
    bare = estimate_pose(query_px, match_px, *views, verification_cfg(covariance_floor_rotation_deg=0.0,
                                                                       covariance_floor_translation=0.0))
    floored = estimate_pose(query_px, match_px, *views, verification_cfg(covariance_floor_rotation_deg=2.0,
                                                                          covariance_floor_translation=0.05))
    added = np.diag(floored.covariance - bare.covariance)
    np.testing.assert_allclose(added, [0.05 ** 2] * 3 + [np.radians(2.0) ** 2] * 3, rtol=1e-9)
    np.testing.assert_array_equal(floored.rotation, bare.rotation)


def test_a_depth_source_is_given_computed_once_when_needed_or_none():
    from vlad_localization.verification.depth_sources import DepthSource

    image = np.full((4, 6), 2000, np.uint16)  # 2 m at 0.001 m per unit
    points = np.array([[1.0, 1.0], [5.0, 3.0]])
    assert DepthSource().at(0.001, 10.0) is None and DepthSource.given(None).at(0.001, 10.0) is None
    np.testing.assert_allclose(DepthSource.given(image).at(0.001, 10.0)(points), [2.0, 2.0])
    calls = []
    lazy = DepthSource.computed(lambda: calls.append(1) or image)
    lookup = lazy.at(0.001, 10.0)
    assert calls == []  # nothing computed until the depth is read
    np.testing.assert_allclose(lookup(points), [2.0, 2.0])
    assert lazy.image() is image and calls == [1]  # computed once
    failed = DepthSource.computed(lambda: None)  # e.g. a stereo pair without calibration
    assert np.isnan(failed.at(0.001, 10.0)(points)).all() and failed.image() is None
