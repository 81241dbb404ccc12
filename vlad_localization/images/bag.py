"""Frames from ROS 2 bags (.db3 / .mcap, read with ``rosbags``; no rclpy), and writing such bags.

Image topics may be ``sensor_msgs/msg/Image`` (any encoding of :mod:`.convert`) or
``sensor_msgs/msg/CompressedImage``. Stamps come from ``header.stamp`` (the bag's receive time
when the header stamp is zero). Poses come from ``nav_msgs/msg/Odometry``,
``geometry_msgs/msg/PoseStamped`` or ``geometry_msgs/msg/PoseWithCovarianceStamped`` and are
interpolated to each image stamp (linear position, slerp orientation); images outside the pose
messages' time range get ``pose=None``. When the bag has the ``sensor_msgs/msg/CameraInfo`` topic
beside the image topic (:func:`camera_info_topic`), each frame's ``camera`` is the camera model of
the last CameraInfo at or before its stamp (the first one before that), scaled to the image size.
With a depth topic (``16UC1``/``32FC1`` registered depth images), each frame's ``depth`` is the one
nearest in stamp within :data:`~.stamp_match.DEFAULT_TOLERANCE_S` (paired as the node does).
"""
from __future__ import annotations

import bisect
import logging
from collections import Counter, deque
from contextlib import contextmanager
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .convert import (
    DEFAULT_MAX_PIXELS,
    ImageConversionError,
    compressed_msg_to_rgb,
    depth_msg_to_array,
    depth_to_image_fields,
    image_msg_to_rgb,
    ns_to_sec_nanosec,
    rgb_to_compressed,
    rgb_to_image_fields,
    stamp_to_ns,
)
from .frames import NS_PER_S, Frame, Pose, PoseTrack, nanoseconds
from .stamp_match import DEFAULT_TOLERANCE_S, OPEN, StampMatcher

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_COV_STAMPED = "geometry_msgs/msg/PoseWithCovarianceStamped"
IMAGE_TYPES = (IMAGE, COMPRESSED)
POSE_TYPES = (ODOMETRY, POSE_STAMPED, POSE_COV_STAMPED)
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


def camera_info_topic(image_topic: str) -> str:
    """The ``sensor_msgs/CameraInfo`` topic beside an image topic (image_transport naming):
    ``/cam/image_raw`` and ``/cam/image_raw/compressed`` -> ``/cam/camera_info``."""
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        base = base[: -len("/compressed")]
    head, _, _ = base.rpartition("/")
    return f"{head}/camera_info"


def typestore():
    """The ROS 2 (Kilted; Humble+ compatible for these messages) message type store."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


class BagError(ValueError):
    """A missing bag or topic, or a topic of the wrong type (the message lists what there is)."""


class BagImageSource:
    """The :class:`Frame` s of one image topic of a bag (see :func:`iter_bag`), a
    :class:`~vlad_localization.images.frames.FrameSource` (``origin`` ``<bag>:<topic>``; camera models
    when a CameraInfo topic is beside the image topic).

    Bad image messages are skipped with a warning; ``skipped`` counts them by
    :class:`~.convert.ImageConversionError` reason (for a summary after iterating). With a
    ``depth_topic``, ``depth`` counts the frames' depth: ``matched``, ``unmatched`` or the reason
    it was not used (the frame is kept without).
    """

    def __init__(self, bag_path, image_topic: str, pose_topic: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 depth_topic: str | None = None):
        self.bag_path = _check_bag(bag_path)
        self.image_topic = image_topic
        self.pose_topic = pose_topic
        self.depth_topic = depth_topic
        self.max_pixels = max_pixels
        self.skipped: Counter[str] = Counter()
        self.depth: Counter[str] = Counter()
        self.yielded = 0
        with _open(self.bag_path) as reader:  # fail early on a missing topic
            _connections(reader, image_topic, IMAGE_TYPES)
            if pose_topic is not None:
                _connections(reader, pose_topic, POSE_TYPES)
            if depth_topic is not None:
                _connections(reader, depth_topic, (IMAGE,))
            info_topic = camera_info_topic(image_topic)
            info = reader.topics.get(info_topic)
            self.info_topic = info_topic if info is not None and info.msgtype == CAMERA_INFO else None

    @property
    def origin(self) -> str:
        return f"{self.bag_path.absolute()}:{self.image_topic}"

    @property
    def camera_models(self) -> bool:
        return self.info_topic is not None

    def expected(self) -> int | None:
        """The image topic's message count from the bag's index (None when it cannot be read)."""
        try:
            with _open(self.bag_path) as reader:
                return sum(c.msgcount for c in reader.connections if c.topic == self.image_topic)
        except Exception:  # only for a progress bar's ETA
            return None

    def __iter__(self) -> Iterator[Frame]:
        self.skipped.clear()
        self.depth.clear()
        self.yielded = 0
        source = f"{self.bag_path}:{self.image_topic}"
        with _open(self.bag_path) as reader:
            track = None
            if self.pose_topic is not None:
                track = PoseTrack(
                    (_stamp(msg, t), _pose_of(msg))
                    for msg, t in _messages(reader, _connections(reader, self.pose_topic, POSE_TYPES))
                )
            cameras = self._cameras(reader)
            images = _connections(reader, self.image_topic, IMAGE_TYPES)
            depths = [] if self.depth_topic is None else _connections(reader, self.depth_topic, (IMAGE,))
            depth_ids = {c.id for c in depths}
            matcher = StampMatcher(nanoseconds(DEFAULT_TOLERANCE_S))
            pending: deque = deque()  # (frame, its depth pairing): a frame waits for a depth stamped at or after it
            for msg, t, conn in _messages(reader, images + depths, True):
                if conn.id in depth_ids:
                    matcher.add(_stamp(msg, t), msg)
                    continue
                try:
                    rgb = (compressed_msg_to_rgb if conn.msgtype == COMPRESSED else image_msg_to_rgb)(msg, self.max_pixels)
                except ImageConversionError as exc:
                    self.skipped[exc.reason] += 1
                    log.warning("skipping a frame of %s at %d ns: %s", source, t, exc)
                    continue
                stamp = _stamp(msg, t)
                frame = Frame(
                    stamp_ns=stamp,
                    frame_id=str(msg.header.frame_id),
                    source=source,
                    pose=None if track is None else track.at(stamp),
                    image=rgb,
                    camera=_camera_at(cameras, stamp, rgb.shape[:2]),
                )
                pending.append((frame, matcher.pair(stamp) if depths else None))
                while pending and (pending[0][1] is None or pending[0][1].done or len(pending) > OPEN):
                    yield self._with_depth(*pending.popleft())
            while pending:
                yield self._with_depth(*pending.popleft())

    def _with_depth(self, frame: Frame, pairing) -> Frame:
        """The frame with its paired depth image, when there is one and it is usable."""
        from vlad_localization.verification.depth_sources import fit_depth

        self.yielded += 1
        if pairing is None:
            return frame
        if pairing.msg is None:
            self.depth["unmatched"] += 1
            return frame
        try:
            frame.depth = fit_depth(depth_msg_to_array(pairing.msg, self.max_pixels), frame.rgb.shape[:2])
            self.depth["matched"] += 1
        except ImageConversionError as exc:
            self.depth[exc.reason] += 1
            log.warning("the depth of %s at %d ns is not used: %s", frame.source, frame.stamp_ns, exc)
        except ValueError as exc:
            self.depth["size_mismatch"] += 1
            log.warning("the depth of %s at %d ns is not used: %s", frame.source, frame.stamp_ns, exc)
        return frame

    def _cameras(self, reader) -> tuple[list[int], list[tuple[object, tuple[int, int]]]]:
        """(stamps, [(camera, (H, W))]) of the CameraInfo messages beside the image topic, in time
        order, where the calibration changes (an uncalibrated or fisheye one is skipped, with a warning)."""
        from vlad_localization.verification.camera import camera_from_info

        if self.info_topic is None:
            return [], []
        found = []
        for msg, t in _messages(reader, _connections(reader, self.info_topic, (CAMERA_INFO,))):
            try:
                found.append((_stamp(msg, t), camera_from_info(msg)))
            except ValueError as exc:
                log.warning("ignoring a CameraInfo of %s at %d ns: %s", self.info_topic, t, exc)
        stamps, cameras = [], []
        for stamp, camera in sorted(found, key=lambda c: c[0]):
            if not cameras or cameras[-1] != camera:
                stamps.append(stamp)
                cameras.append(camera)
        return stamps, cameras

    def summary(self) -> str:
        """E.g. ``"120 frames, skipped 2 (decode_failed: 2)"`` (then ``; depth: matched 118, ...``)."""
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        text = f"{self.yielded} frames" + (f", skipped {total} ({reasons})" if total else "")
        if self.depth_topic is not None:
            text += "; depth: " + (", ".join(f"{k} {v}" for k, v in sorted(self.depth.items())) or "none")
        return text


def iter_bag(
    bag_path: str | Path,
    image_topic: str,
    pose_topic: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    depth_topic: str | None = None,
) -> BagImageSource:
    """Frames of ``image_topic`` in ``bag_path`` (a bag directory, or a .db3/.mcap file), in bag order,
    with their registered depth from ``depth_topic`` when given.

    Returns a re-iterable :class:`BagImageSource`; after iterating, ``.skipped`` counts skipped
    bad frames by reason. Raises :class:`BagError` for a missing bag or topic.
    """
    return BagImageSource(bag_path, image_topic, pose_topic, max_pixels, depth_topic)


def list_image_topics(bag_path: str | Path) -> dict[str, str]:
    """``{topic: msgtype}`` of the bag's image (raw or compressed) topics."""
    with _open(_check_bag(bag_path)) as reader:
        return {name: topic.msgtype for name, topic in sorted(reader.topics.items()) if topic.msgtype in IMAGE_TYPES}


def write_bag(
    path: str | Path,
    frames: Iterable[Frame | np.ndarray],
    image_topic: str = "/camera/image_raw",
    *,
    compressed: bool = False,
    encoding: str = "rgb8",
    pose_topic: str | None = None,
    poses: Iterable[tuple[int, Pose]] | None = None,
    pose_type: str = ODOMETRY,
    frame_id: str = "camera",
    map_frame: str = "map",
    storage: str = "mcap",
    jpeg_quality: int = 90,
    camera_info: bool = False,
    depth_topic: str | None = None,
) -> Path:
    """Write frames as a ROS 2 bag directory at ``path`` (must not exist); returns ``path``.

    ``frames``: :class:`Frame` objects, or plain RGB arrays (stamped ``i`` seconds). Images are
    ``sensor_msgs/Image`` in ``encoding`` (any of :data:`~.convert.SUPPORTED_ENCODINGS`) or, with
    ``compressed=True``, JPEG ``CompressedImage`` (``image_topic`` then usually ends in
    ``/compressed``). With ``pose_topic``, one ``pose_type`` message (Odometry or PoseStamped) per
    frame that has a pose, at the frame's stamp, or the explicit ``poses`` (stamp_ns, Pose) instead.
    ``storage``: ``"mcap"`` or ``"sqlite3"`` (.db3). ``camera_info``: a ``sensor_msgs/CameraInfo``
    (plumb_bob) on :func:`camera_info_topic` beside each frame that has a ``camera``. ``depth_topic``:
    each frame's ``depth`` (uint16 -> 16UC1, float32 -> 32FC1) there, at the frame's stamp.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3, "db3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    if pose_type not in (ODOMETRY, POSE_STAMPED):
        raise ValueError(f"pose_type must be {ODOMETRY} or {POSE_STAMPED}, got {pose_type!r}")
    if poses is not None and pose_topic is None:
        raise ValueError("poses given without a pose_topic to write them to")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"bag {path} already exists: remove it or choose another path")
    store = typestore()
    builder = _MessageBuilder(store)
    stamped_poses = list(poses) if poses is not None else []
    with Writer(path, version=8, storage_plugin=plugins[storage]) as writer:
        image_conn = writer.add_connection(image_topic, COMPRESSED if compressed else IMAGE, typestore=store)
        pose_conn = writer.add_connection(pose_topic, pose_type, typestore=store) if pose_topic else None
        info_conn = writer.add_connection(camera_info_topic(image_topic), CAMERA_INFO, typestore=store) \
            if camera_info else None
        depth_conn = writer.add_connection(depth_topic, IMAGE, typestore=store) if depth_topic else None
        for index, item in enumerate(frames):
            frame = item if isinstance(item, Frame) else Frame(stamp_ns=index * NS_PER_S, image=np.asarray(item))
            header = builder.header(frame.stamp_ns, frame.frame_id or frame_id)
            if compressed:
                fmt, data = rgb_to_compressed(frame.rgb, "jpeg", jpeg_quality)
                msg = store.types[COMPRESSED](header=header, format=fmt, data=np.frombuffer(data, np.uint8))
            else:
                fields = rgb_to_image_fields(frame.rgb, encoding)
                fields["data"] = np.frombuffer(fields["data"], np.uint8)
                msg = store.types[IMAGE](header=header, **fields)
            writer.write(image_conn, frame.stamp_ns, store.serialize_cdr(msg, msg.__msgtype__))
            if depth_conn is not None and frame.depth is not None:
                fields = depth_to_image_fields(frame.depth)
                fields["data"] = np.frombuffer(fields["data"], np.uint8)
                depth = store.types[IMAGE](header=header, **fields)
                writer.write(depth_conn, frame.stamp_ns, store.serialize_cdr(depth, IMAGE))
            if info_conn is not None and frame.camera is not None:
                info = builder.camera_info(header, frame.camera, frame.rgb.shape[:2])
                writer.write(info_conn, frame.stamp_ns, store.serialize_cdr(info, CAMERA_INFO))
            if pose_conn is not None and poses is None and frame.pose is not None:
                stamped_poses.append((frame.stamp_ns, frame.pose))
        for stamp, pose in sorted(stamped_poses, key=lambda sp: sp[0]):
            msg = builder.pose_message(pose_type, stamp, pose, map_frame, frame_id)
            writer.write(pose_conn, stamp, store.serialize_cdr(msg, pose_type))
    return path


class _MessageBuilder:
    """Builds rosbags message objects of one type store."""

    def __init__(self, store):
        self.t = store.types

    def header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = ns_to_sec_nanosec(stamp_ns)
        stamp = self.t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        return self.t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def camera_info(self, header, camera, image_hw):
        """A plumb_bob ``CameraInfo`` of a ``verification.PinholeCamera`` for images of ``image_hw``."""
        k = np.array([camera.fx, 0, camera.cx, 0, camera.fy, camera.cy, 0, 0, 1], np.float64)
        p = np.array([camera.fx, 0, camera.cx, 0, 0, camera.fy, camera.cy, 0, 0, 0, 1, 0], np.float64)
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t[CAMERA_INFO](
            header=header, height=int(image_hw[0]), width=int(image_hw[1]), distortion_model="plumb_bob",
            d=np.asarray(camera.distortion, np.float64), k=k, r=np.eye(3).ravel(), p=p, binning_x=0, binning_y=0,
            roi=roi)

    def pose(self, pose: Pose):
        g = "geometry_msgs/msg/"
        return self.t[g + "Pose"](
            position=self.t[g + "Point"](*map(float, pose.position)),
            orientation=self.t[g + "Quaternion"](*map(float, pose.orientation)),
        )

    def pose_message(self, msgtype: str, stamp_ns: int, pose: Pose, map_frame: str, child_frame: str):
        g = "geometry_msgs/msg/"
        header = self.header(stamp_ns, map_frame)
        if msgtype == POSE_STAMPED:
            return self.t[POSE_STAMPED](header=header, pose=self.pose(pose))
        zero = self.t[g + "Vector3"](0.0, 0.0, 0.0)
        return self.t[ODOMETRY](
            header=header,
            child_frame_id=child_frame,
            pose=self.t[g + "PoseWithCovariance"](pose=self.pose(pose), covariance=np.zeros(36)),
            twist=self.t[g + "TwistWithCovariance"](
                twist=self.t[g + "Twist"](linear=zero, angular=zero), covariance=np.zeros(36)
            ),
        )


def _check_bag(bag_path) -> Path:
    path = Path(bag_path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist (expected a rosbag2 directory or a .db3/.mcap file)")
    return path


@contextmanager
def _open(path: Path):
    """An opened ``rosbags`` AnyReader (closed on exit)."""
    from rosbags.highlevel import AnyReader

    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for unreadable bags
        raise BagError(f"cannot read bag {path} ({type(exc).__name__}: {exc}); expected a rosbag2 "
                       "directory or a .db3/.mcap file") from exc
    try:
        yield reader
    finally:
        reader.close()


def _connections(reader, topic: str, msgtypes: tuple[str, ...]) -> list:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        available = ", ".join(f"{name} ({t.msgtype})" for name, t in sorted(reader.topics.items())) or "none"
        raise BagError(f"topic {topic!r} is not in bag {reader.paths[0]}; available topics: {available}")
    wrong = sorted({c.msgtype for c in conns if c.msgtype not in msgtypes})
    if wrong:
        raise BagError(f"topic {topic!r} has type {', '.join(wrong)}, expected one of {', '.join(msgtypes)}")
    return conns


def _messages(reader, connections, with_connection: bool = False):
    """Deserialised messages (msg, t[, connection]) in time order; damage found while reading (a
    corrupt chunk or record) is a BagError."""
    t = None
    try:
        for conn, t, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, conn.msgtype)
            yield (msg, t, conn) if with_connection else (msg, t)
    except Exception as exc:  # rosbags' readers raise many unrelated types on corrupt data
        where = "before the first message" if t is None else f"after the message at {t} ns"
        raise BagError(f"bag {reader.paths[0]} is corrupt {where} ({type(exc).__name__}: {exc})") from exc


def _camera_at(cameras, stamp_ns: int, image_hw):
    """The camera of the last CameraInfo at or before ``stamp_ns`` (else the first), resized to the image."""
    stamps, entries = cameras
    if not entries:
        return None
    camera, info_hw = entries[max(0, bisect.bisect_right(stamps, stamp_ns) - 1)]
    return camera.resized(info_hw, image_hw) if all(info_hw) else camera


def _stamp(msg, receive_ns: int) -> int:
    ns = stamp_to_ns(msg.header.stamp)
    return ns if ns else int(receive_ns)


def _pose_of(msg) -> Pose:
    pose = msg.pose.pose if msg.__msgtype__ in (ODOMETRY, POSE_COV_STAMPED) else msg.pose
    p, q = pose.position, pose.orientation
    return Pose((float(p.x), float(p.y), float(p.z)), (float(q.x), float(q.y), float(q.z), float(q.w)))
