"""The robot's pose in the map from a loop closure verified against a prebuilt map's keyframe.

Frames: ``map``, the frame of the keyframe poses the map was built with (``build-map --poses`` /
``--pose-topic``, or the odometry of a saved run: for keyframes built with odometry, the odometry
frame of the mapping run); ``base``, the robot body those poses are of; ``camera``, a camera's
optical frame (x right, y down, z forward). With ``(R, t)`` the verified
:class:`~vlad_localization.verification.RelativePose` (``X_query = R X_match + t``, query camera
from keyframe camera) and ``base_T_camera`` the extrinsic of each camera (its optical frame in the
base frame, ``verification.camera_to_base``; it maps camera coordinates to base coordinates)::

    map_T_base(query) = map_T_base(keyframe) . base_T_camera(keyframe) . (R, t)^-1 . base_T_camera(query)^-1

Covariance: 6x6 in the order of ``geometry_msgs/PoseWithCovariance`` (x, y, z, rotation about the
map's X, Y, Z axes): a perturbation ``(dp, dtheta)`` moves the pose ``(R_b, p_b)`` to
``(exp([dtheta]x) R_b, p_b + dp)``, both in the map frame (the convention of
:mod:`.covariance`, there in the query camera's frame). First order: ``Sigma = J Sigma_rel J^T``
with ``J`` the Jacobian of the composition at the estimate (:func:`composition_jacobian`); the
keyframe pose and the extrinsics are taken as exact.

Monocular edges (``metric`` false) have no scale: the orientation is composed as above; the
position is the keyframe camera's (the query camera is placed there, the extrinsic applied), and
its covariance is ``monocular_baseline_m^2`` on each axis on top of the propagated lever-arm term:
``verification.monocular_baseline_m`` bounds the keyframe-to-query camera distance of a revisit
recognised by appearance, so every offset within that bound lies inside the 1-sigma ellipsoid.
:attr:`MapPose.metric` stays false: such a pose is never passed off as metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlad_localization.images.frames import nanoseconds
from vlad_localization.verification.relative_pose import quaternion_xyzw

IDENTITY_EXTRINSIC = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # [x, y, z, qx, qy, qz, qw]
EXTRINSIC_SIZE = len(IDENTITY_EXTRINSIC)


def rotation_from_quaternion(q) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (x, y, z, w) (normalised here)."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def transform(rotation, translation) -> np.ndarray:
    """4x4 homogeneous transform of ``(R, t)``."""
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, np.ravel(translation)
    return out


def pose_matrix(position, orientation) -> np.ndarray:
    """4x4 transform of a position (x, y, z) and a quaternion (x, y, z, w)."""
    return transform(rotation_from_quaternion(orientation), position)


def camera_to_base(values, camera: int) -> np.ndarray:
    """``base_T_camera`` (4x4) of camera ``camera`` from ``verification.camera_to_base``: seven numbers
    ``[x, y, z, qx, qy, qz, qw]`` per camera, flattened; empty: identity for every camera."""
    values = list(values or ())
    if not values:
        return np.eye(4)
    start = EXTRINSIC_SIZE * int(camera)
    if len(values) % EXTRINSIC_SIZE or start + EXTRINSIC_SIZE > len(values):
        raise ValueError(f"verification.camera_to_base holds {len(values) / EXTRINSIC_SIZE:g} extrinsic(s) "
                         f"[x, y, z, qx, qy, qz, qw]; camera {camera} has none: give 7 numbers per camera")
    x, y, z, *q = values[start:start + EXTRINSIC_SIZE]
    return pose_matrix((x, y, z), q)


def _skew(v) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


@dataclass
class MapPose:
    """The query robot's base pose in the map frame: ``rotation`` (3x3), ``position`` (3,) in
    metres, 6x6 ``covariance`` (see the module doc), ``metric`` (false: monocular, the position is
    the keyframe's, see the module doc)."""

    rotation: np.ndarray
    position: np.ndarray
    covariance: np.ndarray
    metric: bool

    @property
    def quaternion(self) -> np.ndarray:
        return quaternion_xyzw(self.rotation)

    @property
    def matrix(self) -> np.ndarray:
        return transform(self.rotation, self.position)

    def position_std(self) -> float:
        """Standard deviation (m) along the least certain direction of the position."""
        return float(np.sqrt(max(np.linalg.eigvalsh(self.covariance[:3, :3]).max(), 0.0)))

    def rotation_std_deg(self) -> float:
        """Standard deviation (deg) about the least certain rotation axis."""
        return float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(self.covariance[3:, 3:]).max(), 0.0))))

    def to_json(self) -> dict:
        """``{"position": [x, y, z], "orientation": [qx, qy, qz, qw], "covariance": 36 row-major
        numbers (x, y, z, rotation about X, Y, Z), "metric": bool}``."""
        return {"position": [float(v) for v in self.position],
                "orientation": [float(v) for v in self.quaternion],
                "covariance": [float(v) for v in np.asarray(self.covariance).ravel()],
                "metric": bool(self.metric)}


def composition_jacobian(map_T_camera_k: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                         camera_T_base_q: np.ndarray, metric: bool = True) -> np.ndarray:
    """6x6 Jacobian of the base pose (map frame, ``[dp, dtheta]``) with respect to the relative pose's
    perturbation ``[dt, dr]`` (query camera frame). Metric::

        dtheta = -R_c dr,  dp = -R_c dt + (-R_c [t]x + [R_c p_cb]x R_c) dr

    with ``R_c = R_k R^T`` the query camera's rotation in the map and ``p_cb`` the base origin in the
    query camera's frame; monocular: the position does not depend on ``t`` (``dp`` keeps only the
    lever-arm term ``[R_c p_cb]x R_c dr``)."""
    r_c = map_T_camera_k[:3, :3] @ rotation.T
    lever = _skew(r_c @ camera_T_base_q[:3, 3]) @ r_c
    jac = np.zeros((6, 6))
    jac[3:, 3:] = -r_c
    if metric:
        jac[:3, :3] = -r_c
        jac[:3, 3:] = -r_c @ _skew(translation) + lever
    else:
        jac[:3, 3:] = lever
    return jac


def compose(keyframe_base: np.ndarray, keyframe_extrinsic: np.ndarray, rotation: np.ndarray,
            translation: np.ndarray, covariance: np.ndarray, query_extrinsic: np.ndarray, metric: bool,
            monocular_baseline_m: float) -> MapPose:
    """The query's base pose from 4x4 ``map_T_base`` of the keyframe, the two ``base_T_camera``
    extrinsics and a relative pose ``(R, t)`` with its covariance (see the module doc)."""
    map_T_camera_k = keyframe_base @ keyframe_extrinsic
    camera_T_base_q = np.linalg.inv(query_extrinsic)
    camera_k_T_camera_q = np.linalg.inv(transform(rotation, translation))
    if not metric:  # the scale is unknown: the query camera is placed at the keyframe camera
        camera_k_T_camera_q[:3, 3] = 0.0
    base = map_T_camera_k @ camera_k_T_camera_q @ camera_T_base_q
    jac = composition_jacobian(map_T_camera_k, rotation, translation, camera_T_base_q, metric)
    sigma = jac @ np.asarray(covariance, np.float64) @ jac.T
    if not metric:
        sigma[:3, :3] += monocular_baseline_m ** 2 * np.eye(3)
    return MapPose(base[:3, :3], base[:3, 3].copy(), 0.5 * (sigma + sigma.T), bool(metric))


def map_pose_of(relative_pose, keyframe_pose, keyframe_extrinsic: np.ndarray, query_extrinsic: np.ndarray,
                monocular_baseline_m: float) -> MapPose | None:
    """The query robot's pose in the map, or None when the relative pose was rejected or the keyframe
    has no pose. ``keyframe_pose``: the keyframe's ``images.frames.Pose`` (position, quaternion
    x, y, z, w) in the map; extrinsics ``base_T_camera`` (4x4, :func:`camera_to_base`)."""
    if relative_pose is None or not relative_pose.ok or keyframe_pose is None:
        return None
    return compose(pose_matrix(keyframe_pose.position, keyframe_pose.orientation), keyframe_extrinsic,
                   relative_pose.rotation, relative_pose.translation, relative_pose.covariance, query_extrinsic,
                   relative_pose.metric, monocular_baseline_m)


@dataclass(frozen=True)
class InitialPosePolicy:
    """When a map pose may re-initialise a localisation stack (the node's ``~/initialpose_out``):
    its loop closure's score at least ``min_score``, its position and rotation standard deviations
    (least certain direction) at most ``max_position_std_m`` / ``max_rotation_std_deg``, and at
    least ``min_interval_s`` (query stamps) after the last one published."""

    min_score: float
    max_position_std_m: float
    max_rotation_std_deg: float
    min_interval_s: float

    def refusal(self, map_pose: MapPose, score: float) -> str | None:
        """``low_score`` | ``uncertain_position`` | ``uncertain_rotation``, or None when it passes."""
        if not score >= self.min_score:
            return "low_score"
        if not map_pose.position_std() <= self.max_position_std_m:
            return "uncertain_position"
        if not map_pose.rotation_std_deg() <= self.max_rotation_std_deg:
            return "uncertain_rotation"
        return None


class InitialPoseGate:
    """Applies an :class:`InitialPosePolicy` to the stream of map poses (remembers the last stamp published)."""

    def __init__(self):
        self.last_ns: int | None = None

    def offer(self, stamp_ns: int, map_pose: MapPose, score: float, policy: InitialPosePolicy) -> str:
        """``published`` (and remembered), ``rate_limited`` or the policy's refusal reason."""
        reason = policy.refusal(map_pose, score)
        if reason is not None:
            return reason
        if self.last_ns is not None and abs(int(stamp_ns) - self.last_ns) < nanoseconds(policy.min_interval_s):
            return "rate_limited"
        self.last_ns = int(stamp_ns)
        return "published"
