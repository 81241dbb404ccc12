"""The node's depth input, per camera: a registered depth image topic (``depth_topics``) or the right
image of a stereo pair (``right_image_topics``, with the CameraInfo beside it and the left camera's),
paired with each frame by stamp (:class:`~vlad_localization.images.stamp_match.StampMatcher`) and
given to the detector as the frame's depth; a stereo pair's depth (SGBM, ~0.3 s at 752x480) is
computed only when the detector asks for it (a new keyframe, or a closure needing the query's depth).

A depth that cannot be used (an encoding other than 16UC1/mono16/32FC1, a size neither the frame's
nor a scaled one, no valid pixel; for stereo a bad right image, a missing or unusable calibration)
is reported through ``report(reason, text)`` as ``depth_<reason>`` / ``stereo_<reason>`` and the frame
is processed without depth (monocular). Per camera, ``NodeStats.depth`` counts the depth messages
received, matched to a processed frame, missing for one (``unmatched``) and rejected.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from vlad_localization.images.convert import ImageConversionError, depth_msg_to_array, msg_to_rgb
from vlad_localization.images.frames import nanoseconds
from vlad_localization.images.stamp_match import Pairing, StampMatcher
from vlad_localization.verification.depth import StereoRig, stereo_depth_image
from vlad_localization.verification.depth_sources import DepthSource, fit_depth

DEPTH_WAIT_S = 0.25  # the worker waits up to this long after a frame arrived for its depth to arrive ...
SILENT_S = 10.0  # ... unless the depth topic has been silent this long (a stopped sensor: no wait)


@dataclass(frozen=True)
class StereoPair:
    """A frame's stereo input: the rectification and the right image, or the reason it cannot be
    used (``(counter key, text)``). The right image travels in shared memory beside the frame:
    :meth:`without_right` is what is pickled, :meth:`with_right` puts it back."""

    rig: StereoRig | None = None
    right: np.ndarray | None = field(default=None, repr=False)
    max_depth_m: float = 0.0
    rejection: tuple[str, str] | None = None

    def without_right(self) -> "StereoPair":
        return replace(self, right=None)

    def with_right(self, right: np.ndarray | None) -> "StereoPair":
        return replace(self, right=right)

    def depth_source(self, rgb: np.ndarray, rejections: list) -> DepthSource:
        """The frame's :class:`DepthSource` for ``LoopClosureDetector.process(depth=)``, computed on
        demand: the depth (SGBM), or None with ``(reason, text)`` appended to ``rejections``."""
        def compute() -> np.ndarray | None:
            if self.rejection is not None:
                rejections.append(self.rejection)
                return None
            try:
                depth = stereo_depth_image(rgb, self.right, self.rig, self.max_depth_m)
            except (cv2.error, ValueError) as exc:  # e.g. a calibration OpenCV cannot rectify
                rejections.append(("stereo_failed", f"{type(exc).__name__}: {exc}"))
                return None
            if not np.isfinite(depth).any():
                rejections.append(("stereo_no_valid_depth", "no pixel matched between the stereo images"))
                return None
            return depth
        return DepthSource.computed(compute)


@dataclass(frozen=True)
class PendingDepth:
    """A frame's pairing, made when the frame arrived (executor), resolved by the worker."""

    pairing: Pairing
    arrived: float  # time.monotonic()


def depth_sources(image_topics, depth_topics, right_topics) -> dict[int, tuple[str, str]]:
    """{camera: (kind, topic)} from the node's parameters: ``depth_topics`` and ``right_image_topics``
    are empty or one entry per image topic ('' = none); a camera takes one or the other (ValueError)."""
    sources: dict[int, tuple[str, str]] = {}
    for kind, name, topics in (("depth", "depth_topics", depth_topics), ("stereo", "right_image_topics", right_topics)):
        if topics and len(topics) != len(image_topics):
            raise ValueError(f"{name} has {len(topics)} entries for {len(image_topics)} image_topics: give one per "
                             "image topic ('' for a camera without) or none")
        for camera, topic in enumerate(topics):
            if topic and camera in sources:
                raise ValueError(f"camera {camera} ({image_topics[camera]}) has both a depth topic and a right image "
                                 "topic: give one")
            if topic:
                sources[camera] = (kind, topic)
    return sources


def _stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class DepthInput:
    """Depth (``kind`` ``depth``) or stereo (``stereo``) input of some of the node's cameras."""

    def __init__(self, sources: dict[int, tuple[str, str]], tolerance_s: float, stats, report,
                 max_pixels: int, max_depth_m: float, wait_s: float = DEPTH_WAIT_S):
        self.sources = dict(sources)  # camera -> (kind, topic)
        self.stats, self._report = stats, report
        self.max_pixels, self.max_depth_m, self.wait_s = max_pixels, max_depth_m, wait_s
        self._matchers = {camera: StampMatcher(nanoseconds(tolerance_s)) for camera in self.sources}
        self._infos: dict[tuple[int, str], object] = {}  # (camera, "left" | "right") -> CameraInfo

    # -- executor callbacks (never block) --------------------------------------------------------
    def on_message(self, camera: int, msg) -> None:
        """A depth image, or a right image, of ``camera``."""
        self.stats.count("depth", (camera, "received"))
        self._matchers[camera].add(_stamp_ns(msg), msg)

    def on_info(self, camera: int, msg, side: str = "left") -> None:
        """The CameraInfo of ``camera``'s image (``left``) or of its right image (``right``)."""
        self._infos[camera, side] = msg

    def diagnostics(self, topics) -> dict[str, str]:
        """``right_camera_info[<image topic>]`` (``yes`` | ``no``) of each stereo camera."""
        return {f"right_camera_info[{topics[camera]}]": "yes" if (camera, "right") in self._infos else "no"
                for camera, (kind, _) in sorted(self.sources.items()) if kind == "stereo"}

    def frame_arrived(self, camera: int, stamp_ns: int) -> PendingDepth | None:
        matcher = self._matchers.get(camera)
        return None if matcher is None else PendingDepth(matcher.pair(stamp_ns), time.monotonic())

    # -- worker ------------------------------------------------------------------------------------
    def depth_for(self, camera: int, pending: PendingDepth | None, rgb: np.ndarray):
        """The frame's depth: an array (depth image), a :class:`StereoPair` (its
        :meth:`~StereoPair.depth_source` computes the depth on demand, in the inference process) or
        None (no depth input, none matched, or rejected)."""
        if pending is None:
            return None
        last = self._matchers[camera].last_added
        live = last is not None and pending.arrived - last < SILENT_S
        msg = pending.pairing.wait(pending.arrived + self.wait_s - time.monotonic() if live else 0.0)
        if msg is None:
            self.stats.count("depth", (camera, "unmatched"))
            return None
        self.stats.count("depth", (camera, "matched"))
        if self.sources[camera][0] == "stereo":
            return self._stereo_pair(camera, msg, rgb)
        try:
            return fit_depth(depth_msg_to_array(msg, self.max_pixels), rgb.shape[:2])
        except ImageConversionError as exc:
            return self.reject(camera, f"depth_{exc.reason}", str(exc))
        except ValueError as exc:
            return self.reject(camera, "depth_size_mismatch", str(exc))

    def _stereo_pair(self, camera: int, right_msg, rgb: np.ndarray) -> "StereoPair":
        """The rectification and the right image (prepared here: cheap), or why they cannot be used
        (reported only if the depth is asked for)."""
        left, right = self._infos.get((camera, "left")), self._infos.get((camera, "right"))
        if left is None or right is None:
            return StereoPair(rejection=("stereo_no_camera_info", "no CameraInfo received yet for the " + " and ".join(
                s for s, m in (("left", left), ("right", right)) if m is None) + " image"))
        try:
            rig = StereoRig.from_camera_info(left, right)
            right_rgb = msg_to_rgb(right_msg, self.max_pixels)
        except ImageConversionError as exc:
            return StereoPair(rejection=(f"stereo_{exc.reason}", str(exc)))
        except ValueError as exc:
            return StereoPair(rejection=("stereo_bad_calibration", str(exc)))
        if right_rgb.shape != rgb.shape:
            return StereoPair(rejection=("stereo_size_mismatch", f"the right image is {right_rgb.shape[1]}x"
                                         f"{right_rgb.shape[0]}, the left {rgb.shape[1]}x{rgb.shape[0]}"))
        info_hw = (int(left.height), int(left.width))
        if all(info_hw) and info_hw != rgb.shape[:2]:  # images scaled from the calibrated size
            rig = rig.scaled(rgb.shape[1] / info_hw[1], rgb.shape[0] / info_hw[0])
        return StereoPair(rig, right_rgb, self.max_depth_m)

    def reject(self, camera: int, reason: str, text: str) -> None:
        """Count and report a depth of ``camera`` that was not used (``reason``: the counter's key)."""
        self.stats.count("depth", (camera, "rejected"))
        self._report(reason, f"depth of camera {camera} ({self.sources[camera][1]}) not used, the frame is "
                             f"processed without: {text}")
        return None
