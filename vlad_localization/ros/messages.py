"""Query results -> standard ROS 2 messages (and back, for consumers of ``~/candidates``).

``~/candidates`` is a 2-D ``std_msgs/Float64MultiArray`` (row-major, strides as in the
``MultiArrayLayout`` docs): one row per candidate in rank order, columns :data:`CANDIDATE_COLUMNS`
(``query_stamp``, ``camera``, then the candidate fields every output shares,
:data:`vlad_localization.detector.CANDIDATE_FIELDS`). ``layout.dim[0].label`` is
``candidate@<query_stamp s>/<camera>``, so a frame with no candidate (K = 0) still names itself.
Times are seconds (float64); a keyframe without a stamp has ``map_stamp = NaN``, a candidate not
re-ranked NaN scores.

``~/loop_closure_edges`` is the same kind of array, one row per verified loop closure (a pose-graph
edge), columns :data:`EDGE_COLUMNS`: both stamps, the matched keyframe's id and map (``0`` the
prebuilt map, ``1`` this run's keyframes), the relative pose of the match camera in the query camera's
optical frame (``X_query = R X_match + t``; x right, y down, z forward; translation in metres when
``metric`` is 1, else a unit direction), the patch score, the inliers of the verification, the 6x6
covariance row-major in ``cov0 .. cov35`` (order tx, ty, tz, rx, ry, rz; see
:mod:`vlad_localization.verification.covariance`) and ``refined`` (1: SIFT matches in both images; 0:
the patch keypoints alone, a map keyframe stored without its image: a coarser pose).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovarianceStamped
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension

from vlad_localization.detector import CANDIDATE_FIELDS, candidate_row
from vlad_localization.images.bag import camera_info_topic  # noqa: F401  (the node's, beside each image topic)
from vlad_localization.images.convert import ns_to_sec_nanosec, rgb_to_image_fields
from vlad_localization.images.convert import stamp_to_ns  # noqa: F401  (the node's header stamps -> ns)
from vlad_localization.images.frames import seconds
from vlad_localization.mapdb.store import Store
from vlad_localization.verification.camera import camera_from_info  # noqa: F401  (the node's CameraInfo reader)

CANDIDATE_COLUMNS = ("query_stamp", "camera") + CANDIDATE_FIELDS

EDGE_COLUMNS = (
    "query_stamp", "match_stamp", "map_id", "map", "tx", "ty", "tz", "qx", "qy", "qz", "qw", "metric",
    "score", "inliers", *(f"cov{i}" for i in range(36)), "refined",
)


def ns_to_stamp(ns: int) -> Time:
    sec, nanosec = ns_to_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nanosec)


def candidates_msg(query_stamp_ns: int, camera: int, candidates: Sequence) -> Float64MultiArray:
    """The ``~/candidates`` array for one processed frame (K = len(candidates), may be 0)."""
    query_s = seconds(query_stamp_ns)
    rows = [(query_s, float(camera)) + candidate_row(c) for c in candidates]
    return _table_msg(rows, CANDIDATE_COLUMNS, f"candidate@{query_s:.9f}/{int(camera)}")


def _table_msg(rows, columns: Sequence[str], row_label: str) -> Float64MultiArray:
    """A row-major 2-D ``Float64MultiArray``: ``dim[0]`` = rows, ``dim[1]`` = the column labels."""
    n, m = len(rows), len(columns)
    msg = Float64MultiArray()
    msg.layout.dim = [
        MultiArrayDimension(label=row_label, size=n, stride=n * m),
        MultiArrayDimension(label=",".join(columns), size=m, stride=m),
    ]
    msg.data = np.asarray(rows, dtype=np.float64).reshape(-1).tolist()
    return msg


def parse_candidates(msg: Float64MultiArray) -> list[dict[str, float]]:
    """``~/candidates`` (or ``~/loop_closure_edges``) -> one dict per row (column name -> value), in order."""
    labels = msg.layout.dim[1].label.split(",")
    data = np.asarray(msg.data, dtype=np.float64).reshape(msg.layout.dim[0].size, len(labels))
    return [dict(zip(labels, row.tolist())) for row in data]


def loop_closure_edge_msg(query_stamp_ns: int, match_stamp_ns: int, map_id: int, store: Store | str, pose,
                          score: float) -> Float64MultiArray:
    """``~/loop_closure_edges`` with one edge: ``pose`` a verified (status ``ok``)
    :class:`~vlad_localization.verification.RelativePose`, ``store`` the matched keyframe's
    :class:`~vlad_localization.mapdb.Store` (or its label, ``prebuilt`` or ``run``)."""
    if pose.status != "ok":
        raise ValueError(f"a rejected pose ({pose.status}) is not a loop-closure edge")
    store = Store.parse(store)
    row = [seconds(query_stamp_ns), seconds(match_stamp_ns), float(map_id), float(store),
           *np.asarray(pose.translation, np.float64), *pose.quaternion, float(pose.metric), float(score),
           float(pose.inliers), *np.asarray(pose.covariance, np.float64).ravel(), float(pose.refine != "none")]
    return _table_msg([row], EDGE_COLUMNS, "edge")


def parse_loop_closure_edges(msg: Float64MultiArray) -> list[dict]:
    """``~/loop_closure_edges`` -> one dict per edge: ``query_stamp``, ``match_stamp`` (s), ``map_id``
    (int), ``map`` (``prebuilt`` | ``run``), ``translation`` (3,), ``quaternion`` (x, y, z, w),
    ``metric`` (bool), ``score``, ``inliers`` (int), ``covariance`` (6, 6), ``refined`` (bool)."""
    edges = []
    for row in parse_candidates(msg):
        edges.append({
            "query_stamp": row["query_stamp"], "match_stamp": row["match_stamp"], "map_id": int(row["map_id"]),
            "map": Store(int(row["map"])).label, "translation": np.array([row[k] for k in ("tx", "ty", "tz")]),
            "quaternion": np.array([row[k] for k in ("qx", "qy", "qz", "qw")]), "metric": bool(row["metric"]),
            "score": row["score"], "inliers": int(row["inliers"]),
            "covariance": np.array([row[f"cov{i}"] for i in range(36)]).reshape(6, 6),
            "refined": bool(row.get("refined", 1.0)),
        })
    return edges


def loop_closure_msg(query_stamp_ns: int, match_stamp_ns: int) -> Float64MultiArray:
    """LIO-SAM / LVI-SAM external loop closure: ``data = [t_query, t_match]`` (s)."""
    return Float64MultiArray(data=[seconds(query_stamp_ns), seconds(match_stamp_ns)])


def pose_array_msg(header: Header, candidates: Sequence) -> PoseArray:
    """The candidates' keyframe poses in rank order (those without a pose are skipped)."""
    msg = PoseArray(header=header)
    for c in candidates:
        if c.pose is None:
            continue
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in c.pose.position)
        o = pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in c.pose.orientation)
        msg.poses.append(pose)
    return msg


def pose_with_covariance_msg(header: Header, map_pose) -> PoseWithCovarianceStamped:
    """``~/pose``: a :class:`~vlad_localization.verification.map_pose.MapPose` (the robot's base in the
    map frame; covariance order x, y, z, rotation about X, Y, Z, as the message defines it)."""
    msg = PoseWithCovarianceStamped(header=header)
    pose = msg.pose.pose
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in map_pose.position)
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in map_pose.quaternion)
    msg.pose.covariance = [float(v) for v in np.asarray(map_pose.covariance, np.float64).ravel()]
    return msg


def image_msg(header: Header, rgb: np.ndarray) -> Image:
    """An ``rgb8`` ``sensor_msgs/Image`` of an H x W x 3 uint8 array."""
    return Image(header=header, **rgb_to_image_fields(rgb))


def candidates_query(msg: Float64MultiArray) -> tuple[float, int] | None:
    """(query stamp in s, camera index) of a ``~/candidates`` message (also when K = 0); None when
    the message does not say (not from this node)."""
    if not msg.layout.dim:
        return None
    _, _, query = msg.layout.dim[0].label.partition("@")
    stamp, _, camera = query.partition("/")
    try:
        return float(stamp), int(camera)
    except ValueError:
        return None
