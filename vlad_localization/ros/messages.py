"""Query results -> standard ROS 2 messages (and back, for consumers of ``~/candidates``).

``~/candidates`` is a 2-D ``std_msgs/Float64MultiArray`` (row-major, strides as in the
``MultiArrayLayout`` docs): one row per candidate in rank order, columns :data:`CANDIDATE_COLUMNS`
(``query_stamp``, ``camera``, then the candidate fields every output shares,
:data:`vlad_localization.detector.CANDIDATE_FIELDS`). ``layout.dim[0].label`` is
``candidate@<query_stamp s>/<camera>``, so a frame with no candidate (K = 0) still names itself. Times are seconds (float64); a keyframe
without a stamp has ``map_stamp = NaN``, a candidate not re-ranked NaN scores.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension

from vlad_localization.detector import CANDIDATE_FIELDS, candidate_row
from vlad_localization.images.convert import rgb_to_image_fields

CANDIDATE_COLUMNS = ("query_stamp", "camera") + CANDIDATE_FIELDS


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def candidates_msg(query_stamp_ns: int, camera: int, candidates: Sequence) -> Float64MultiArray:
    """The ``~/candidates`` array for one processed frame (K = len(candidates), may be 0)."""
    rows = [(query_stamp_ns * 1e-9, float(camera)) + candidate_row(c) for c in candidates]
    n, m = len(rows), len(CANDIDATE_COLUMNS)
    msg = Float64MultiArray()
    msg.layout.dim = [
        MultiArrayDimension(label=f"candidate@{query_stamp_ns * 1e-9:.9f}/{int(camera)}", size=n, stride=n * m),
        MultiArrayDimension(label=",".join(CANDIDATE_COLUMNS), size=m, stride=m),
    ]
    msg.data = np.asarray(rows, dtype=np.float64).reshape(-1).tolist()
    return msg


def parse_candidates(msg: Float64MultiArray) -> list[dict[str, float]]:
    """``~/candidates`` -> one dict per row (column name -> value), in rank order."""
    labels = msg.layout.dim[1].label.split(",")
    data = np.asarray(msg.data, dtype=np.float64).reshape(msg.layout.dim[0].size, len(labels))
    return [dict(zip(labels, row.tolist())) for row in data]


def loop_closure_msg(t_query: float, t_match: float) -> Float64MultiArray:
    """LIO-SAM / LVI-SAM external loop closure: ``data = [t_query, t_match]`` (s)."""
    return Float64MultiArray(data=[float(t_query), float(t_match)])


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
