"""The robot's pose in the map (verification.map_pose): the composition of a keyframe's map pose, a
verified relative pose and the camera-to-base extrinsics against a direct computation on random
poses, the covariance propagation against numeric Jacobians and Monte Carlo, monocular poses, the
extrinsic configuration and the ~/initialpose_out policy."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vlad_localization.config import ConfigError, VerificationConfig, apply_overrides, load_config
from vlad_localization.images.frames import Pose
from vlad_localization.verification import RelativePose
from vlad_localization.verification.map_pose import (
    InitialPoseGate,
    InitialPosePolicy,
    MapPose,
    camera_to_base,
    compose,
    map_pose_of,
    pose_matrix,
    transform,
)
from vlad_localization.verification.relative_pose import quaternion_xyzw


def random_rotation(rng, scale=np.pi) -> np.ndarray:
    return cv2.Rodrigues(rng.uniform(-1, 1, 3) * scale / np.sqrt(3))[0]


def random_transform(rng, metres=3.0) -> np.ndarray:
    return transform(random_rotation(rng), rng.uniform(-metres, metres, 3))


def random_covariance(rng, t_std=0.05, r_std=0.01) -> np.ndarray:
    a = rng.normal(size=(6, 6)) * np.array([t_std] * 3 + [r_std] * 3)[:, None]
    return a @ a.T + np.diag([t_std ** 2] * 3 + [r_std ** 2] * 3) * 0.1


def as_pose(matrix) -> Pose:
    return Pose(tuple(matrix[:3, 3]), tuple(quaternion_xyzw(matrix[:3, :3])))


def extrinsic_values(matrix) -> list[float]:
    return [*matrix[:3, 3], *quaternion_xyzw(matrix[:3, :3])]


def scene(seed: int):
    """A random world: keyframe base pose, query base pose (truth), the two cameras' extrinsics and the
    relative pose the verification would measure, (R, t) = query camera <- keyframe camera."""
    rng = np.random.default_rng(seed)
    keyframe_base, extr_k, extr_q = random_transform(rng), random_transform(rng, 0.5), random_transform(rng, 0.5)
    query_base = keyframe_base @ random_transform(rng, 1.0)
    relative = np.linalg.inv(query_base @ extr_q) @ keyframe_base @ extr_k
    return rng, keyframe_base, extr_k, extr_q, query_base, relative


def rotation_log(rotation: np.ndarray) -> np.ndarray:
    """Rotation vector of a rotation matrix (angle < pi), exact also for tiny angles (cv2.Rodrigues
    returns 0 below 1e-5 rad)."""
    w = 0.5 * np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    sin = np.linalg.norm(w)
    return w if sin < 1e-15 else w * np.arctan2(sin, (np.trace(rotation) - 1) / 2) / sin


def error_vector(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[dp, dtheta] with truth = (exp([dtheta]x) R, p + dp) (the documented convention, map frame)."""
    return np.concatenate([truth[:3, 3] - estimate[:3, 3], rotation_log(truth[:3, :3] @ estimate[:3, :3].T)])


def perturbed(relative: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The relative pose moved by [dt, dr] (verification.covariance's convention, query camera frame)."""
    return transform(cv2.Rodrigues(delta[3:])[0] @ relative[:3, :3], relative[:3, 3] + delta[:3])


@pytest.mark.parametrize("seed", range(5))
def test_composition_recovers_the_query_base_pose(seed):
    _, keyframe_base, extr_k, extr_q, query_base, relative = scene(seed)
    pose = RelativePose(relative[:3, :3], relative[:3, 3], True, 100, np.eye(6) * 1e-4)
    out = map_pose_of(pose, as_pose(keyframe_base), extr_k, extr_q, 2.0)
    assert out.metric and np.allclose(out.matrix, query_base, atol=1e-9)
    # a point seen by the query camera lands where the keyframe camera's chain puts it
    point_q = np.array([0.3, -0.2, 4.0, 1.0])
    via_keyframe = keyframe_base @ extr_k @ np.linalg.inv(relative) @ point_q
    assert np.allclose(out.matrix @ extr_q @ point_q, via_keyframe, atol=1e-9)


@pytest.mark.parametrize("metric", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_jacobian_equals_numeric_differentiation(seed, metric):
    rng, keyframe_base, extr_k, extr_q, _, relative = scene(seed)
    sigma = random_covariance(rng)
    base = compose(keyframe_base, extr_k, relative[:3, :3], relative[:3, 3], sigma, extr_q, metric, 0.0)
    step, numeric = 1e-6, np.zeros((6, 6))
    for i in range(6):
        delta = np.zeros(6)
        delta[i] = step
        plus, minus = (compose(keyframe_base, extr_k, *(lambda m: (m[:3, :3], m[:3, 3]))(perturbed(relative, s * delta)),
                               sigma, extr_q, metric, 0.0).matrix for s in (1, -1))
        numeric[:, i] = (error_vector(base.matrix, plus) - error_vector(base.matrix, minus)) / (2 * step)
    assert np.allclose(base.covariance, numeric @ sigma @ numeric.T, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_covariance_matches_monte_carlo(seed):
    rng, keyframe_base, extr_k, extr_q, _, relative = scene(seed)
    sigma = random_covariance(rng, t_std=0.02, r_std=0.005)
    pose = RelativePose(relative[:3, :3], relative[:3, 3], True, 100, sigma)
    out = map_pose_of(pose, as_pose(keyframe_base), extr_k, extr_q, 2.0)
    draws = rng.multivariate_normal(np.zeros(6), sigma, 20000)
    errors = np.array([error_vector(out.matrix, compose(keyframe_base, extr_k, *(lambda m: (m[:3, :3], m[:3, 3]))(
        perturbed(relative, d)), sigma, extr_q, True, 0.0).matrix) for d in draws])
    sampled = np.cov(errors.T)
    scale = np.sqrt(np.outer(np.diag(sampled), np.diag(sampled)))
    assert np.abs(sampled - out.covariance).max() / scale.max() < 0.05
    assert np.allclose(np.diag(sampled), np.diag(out.covariance), rtol=0.1)


def test_monocular_pose_has_the_keyframe_position_and_the_baseline_bound():
    _, keyframe_base, extr_k, extr_q, query_base, relative = scene(7)
    unit = relative[:3, 3] / np.linalg.norm(relative[:3, 3])
    sigma = np.diag([1e6, 1e6, 1e6, 1e-4, 1e-4, 1e-4])  # the unknown scale's variance must not leak
    mono = map_pose_of(RelativePose(relative[:3, :3], unit, False, 80, sigma), as_pose(keyframe_base), extr_k, extr_q, 1.5)
    metric = map_pose_of(RelativePose(relative[:3, :3], relative[:3, 3], True, 80, sigma), as_pose(keyframe_base),
                         extr_k, extr_q, 1.5)
    assert not mono.metric and mono.to_json()["metric"] is False
    assert np.allclose(mono.rotation, query_base[:3, :3]) and np.allclose(mono.rotation, metric.rotation)
    camera_k = keyframe_base @ extr_k  # the query camera is placed at the keyframe camera
    assert np.allclose(mono.matrix @ extr_q[:, 3], camera_k[:, 3])
    lever = mono.covariance[:3, :3] - 1.5 ** 2 * np.eye(3)
    assert np.all(np.linalg.eigvalsh(lever) >= -1e-12) and np.linalg.eigvalsh(lever).max() < 1e-3
    assert np.allclose(mono.covariance[3:, 3:], metric.covariance[3:, 3:])
    assert mono.position_std() == pytest.approx(1.5, rel=1e-3)
    # any query camera within the bound of the keyframe camera is inside the 1-sigma ellipsoid
    offset = mono.position - query_base[:3, 3]
    distance = np.linalg.norm(camera_k[:3, 3] - (query_base @ extr_q)[:3, 3])
    assert offset @ np.linalg.solve(mono.covariance[:3, :3], offset) <= (distance / 1.5) ** 2 + 1e-9


def test_rejected_poses_and_keyframes_without_a_pose_give_none():
    identity = np.eye(4)
    ok = RelativePose(np.eye(3), np.array([0.0, 0.0, 1.0]), True, 50, np.eye(6) * 1e-4)
    assert map_pose_of(RelativePose.rejected("too_few_inliers"), Pose(), identity, identity, 2.0) is None
    assert map_pose_of(ok, None, identity, identity, 2.0) is None
    assert isinstance(map_pose_of(ok, Pose(), identity, identity, 2.0), MapPose)


def test_camera_to_base_configuration():
    assert np.array_equal(camera_to_base([], 3), np.eye(4))
    values = [0.1, 0.2, 0.3, 0.0, 0.0, np.sin(0.25), np.cos(0.25), 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
    assert np.allclose(camera_to_base(values, 0), pose_matrix((0.1, 0.2, 0.3), values[3:7]))
    assert np.allclose(camera_to_base(values, 1)[:3, 3], (1, 2, 3))
    with pytest.raises(ValueError, match="camera 2 has none"):
        camera_to_base(values, 2)
    cfg = apply_overrides(load_config(), {"verification.camera_to_base": [0, 0, 1, 0, 0, 0, 1]})
    assert cfg.verification.camera_to_base == [0, 0, 1, 0, 0, 0, 1]
    for bad, reason in (([0.0] * 6, "7 numbers"), ([0, 0, 0, 0, 0, 0, 2.0], "norm 2.0000"),
                        ([0, 0, float("nan"), 0, 0, 0, 1], "NaN")):
        with pytest.raises(ConfigError, match=reason):
            apply_overrides(load_config(), {"verification.camera_to_base": bad})
    with pytest.raises(ConfigError, match="monocular_baseline_m"):
        apply_overrides(load_config(), {"verification.monocular_baseline_m": 0.0})
    assert VerificationConfig().camera_to_base == [] and VerificationConfig().monocular_baseline_m == 2.0


def test_initialpose_policy_and_rate_limit():
    accurate = MapPose(np.eye(3), np.zeros(3), np.diag([0.01] * 3 + [np.radians(1.0) ** 2] * 3), True)
    loose_position = MapPose(np.eye(3), np.zeros(3), np.diag([0.01, 0.01, 1.0] + [1e-6] * 3), True)
    loose_rotation = MapPose(np.eye(3), np.zeros(3), np.diag([0.01] * 3 + [1e-6, 1e-6, np.radians(8) ** 2]), True)
    policy = InitialPosePolicy(min_score=0.9, max_position_std_m=0.5, max_rotation_std_deg=5.0, min_interval_s=10.0)
    gate, s = InitialPoseGate(), 10**9
    assert gate.offer(0, accurate, 0.8, policy) == "low_score"
    assert gate.offer(0, loose_position, 0.95, policy) == "uncertain_position"
    assert gate.offer(0, loose_rotation, 0.95, policy) == "uncertain_rotation"
    assert gate.offer(100 * s, accurate, 0.95, policy) == "published"
    assert gate.offer(105 * s, accurate, 0.95, policy) == "rate_limited"
    assert gate.offer(109 * s, loose_position, 0.95, policy) == "uncertain_position"  # refusals do not count
    assert gate.offer(110 * s, accurate, 0.95, policy) == "published"
    assert gate.offer(111 * s, accurate, float("nan"), policy) == "low_score"


def test_pose_with_covariance_message_carries_the_map_pose():
    from std_msgs.msg import Header

    from vlad_localization.ros.messages import ns_to_stamp, pose_with_covariance_msg

    rng = np.random.default_rng(3)
    pose = MapPose(random_rotation(rng), rng.normal(size=3), random_covariance(rng), True)
    msg = pose_with_covariance_msg(Header(stamp=ns_to_stamp(12 * 10**9 + 5), frame_id="world"), pose)
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("world", 12, 5)
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    assert np.allclose([p.x, p.y, p.z], pose.position)
    assert np.allclose(pose_matrix(pose.position, [o.x, o.y, o.z, o.w]), pose.matrix)
    assert np.allclose(np.reshape(msg.pose.covariance, (6, 6)), pose.covariance)
