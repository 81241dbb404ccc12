"""The one frame record every image source yields (:class:`Frame`), what a source of frames offers
(:class:`FrameSource`), poses, and pose interpolation in time."""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

NS_PER_S = 1_000_000_000  # times are int nanoseconds inside the library; seconds only at its edges


def seconds(stamp_ns: int) -> float:
    """A stamp or duration in ns as seconds, for what the library writes out (JSON, messages, text)."""
    return stamp_ns / NS_PER_S


def nanoseconds(value_s: float) -> int:
    """Seconds (a setting, a CSV column, a command-line value) as int nanoseconds."""
    return round(float(value_s) * NS_PER_S)


@dataclass(frozen=True)
class Pose:
    """A 3-D pose: ``position`` (x, y, z) in metres, ``orientation`` unit quaternion (x, y, z, w)."""

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_xy_yaw(cls, x: float, y: float, yaw: float, z: float = 0.0) -> Pose:
        """A planar pose: heading ``yaw`` (rad, about +z)."""
        return cls((float(x), float(y), float(z)), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))

    @property
    def yaw(self) -> float:
        """Heading about +z (rad), from the orientation quaternion."""
        qx, qy, qz, qw = self.orientation
        return math.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))


@dataclass
class Frame:
    """One camera image with its time, frame, origin and (optional) pose.

    Pass the pixels as ``image`` or a zero-argument ``loader``; read them through :attr:`rgb`
    (H x W x 3 RGB uint8, loaded on first access and kept). ``camera``: the camera model of this
    image (a ``verification.PinholeCamera``, e.g. from a bag's CameraInfo) or None when unknown;
    ``depth``: a depth image registered to it (from a bag's depth topic), or None.
    """

    stamp_ns: int
    frame_id: str = ""
    source: str = ""  # an image path, or "bag_path:topic"
    pose: Pose | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    camera: object | None = field(default=None, repr=False, compare=False)
    depth: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def rgb(self) -> np.ndarray:
        if self.image is None:
            if self.loader is None:
                raise ValueError(f"frame {self.source or self.stamp_ns} has neither an image nor a loader")
            self.image = self.loader()
        return self.image


@runtime_checkable
class FrameSource(Protocol):
    """What ``build-map`` and ``replay`` read from a source of frames (an image folder:
    :func:`~vlad_localization.images.iter_folder`; a bag's image topic:
    :func:`~vlad_localization.images.iter_bag`). Iterating yields its :class:`Frame` s (again on each
    pass); ``origin`` names it as a map records it in its run's sources; ``camera_models`` says
    whether its frames carry their camera model (``Frame.camera``, a bag's CameraInfo); after a
    pass, ``skipped`` counts the frames left out by reason and :meth:`summary` says what was read."""

    origin: str
    camera_models: bool
    skipped: Mapping[str, int]

    def __iter__(self) -> Iterator[Frame]: ...

    def expected(self) -> int | None:
        """How many frames a pass yields at most (for a progress bar), or None when unknown."""

    def summary(self) -> str:
        """After a pass, e.g. ``"120 frames, skipped 2 (decode_failed: 2)"``."""


def interpolate_pose(p0: Pose, p1: Pose, t: float) -> Pose:
    """The pose a fraction ``t`` (0..1) of the way from ``p0`` to ``p1``: linear position, slerp."""
    position = tuple(a + t * (b - a) for a, b in zip(p0.position, p1.position))
    return Pose(position, slerp(p0.orientation, p1.orientation, t))


def slerp(q0, q1, t: float) -> tuple[float, float, float, float]:
    """Spherical linear interpolation of unit quaternions (x, y, z, w), along the shorter arc."""
    a, b = np.asarray(q0, float), np.asarray(q1, float)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    dot = float(a @ b)
    if dot < 0:
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly parallel: lerp is exact to float precision
        q = a + t * (b - a)
    else:
        theta = math.acos(dot)
        q = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    q = q / np.linalg.norm(q)
    return tuple(float(v) for v in q)


class PoseTrack:
    """Time-stamped poses, queried at any stamp by interpolation.

    :meth:`at` returns None for stamps outside [first, last] pose stamp (no extrapolation): a frame
    before the first or after the last pose message gets no pose.
    """

    def __init__(self, stamped_poses: Iterable[tuple[int, Pose]]):
        pairs = sorted(stamped_poses, key=lambda sp: sp[0])
        self.stamps = [int(s) for s, _ in pairs]
        self.poses = [p for _, p in pairs]

    def __len__(self) -> int:
        return len(self.stamps)

    def append(self, stamp_ns: int, pose: Pose, keep: int | None = None) -> None:
        """Add one pose (odometry as it arrives; out-of-order stamps are sorted in), keeping the
        newest ``keep`` poses when given."""
        i = bisect.bisect_right(self.stamps, int(stamp_ns))
        self.stamps.insert(i, int(stamp_ns))
        self.poses.insert(i, pose)
        if keep is not None and len(self.stamps) > keep:
            del self.stamps[:-keep], self.poses[:-keep]

    def at(self, stamp_ns: int, tolerance_ns: int = 0) -> Pose | None:
        """The pose at ``stamp_ns``; within ``tolerance_ns`` outside [first, last] the end pose."""
        if not self.stamps:
            return None
        if stamp_ns < self.stamps[0]:
            return self.poses[0] if self.stamps[0] - stamp_ns <= tolerance_ns else None
        if stamp_ns > self.stamps[-1]:
            return self.poses[-1] if stamp_ns - self.stamps[-1] <= tolerance_ns else None
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if self.stamps[i] == stamp_ns:
            return self.poses[i]
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        return interpolate_pose(self.poses[i - 1], self.poses[i], (stamp_ns - t0) / (t1 - t0))
