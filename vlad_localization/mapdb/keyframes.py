"""Keyframe selection while building a map: minimum time gap, travelled distance, descriptor change.

A frame becomes a keyframe when it passes *every* enabled threshold (0 disables one) relative to the
last keyframe. Time and distance are checked before encoding (cheap pre-filter against the last
candidate); the final decision, including the descriptor change ``1 - cos(global, last keyframe)``,
is made after encoding against the last accepted keyframe.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from vlad_localization.images.frames import nanoseconds


class KeyframeSelector:
    """``prefilter(stamp, position)`` before encoding, ``accept(stamp, position, global)`` after.
    ``skipped`` counts rejections by reason (``time_gap``, ``distance``, ``descriptor_change``)."""

    def __init__(self, min_time_gap_s: float = 0.0, min_distance_m: float = 0.0, min_descriptor_change: float = 0.0):
        self.min_gap_ns = nanoseconds(min_time_gap_s)
        self.min_distance = float(min_distance_m)
        self.min_change = float(min_descriptor_change)
        self.skipped: Counter[str] = Counter()
        self._last = None  # (stamp, position, global) of the last accepted keyframe
        self._candidate = None  # (stamp, position) of the last frame passed by prefilter

    @classmethod
    def from_config(cls, map_cfg) -> "KeyframeSelector":
        return cls(map_cfg.min_time_gap_s, map_cfg.min_distance_m, map_cfg.min_descriptor_change)

    def _motion_reason(self, ref, stamp_ns, position) -> str | None:
        if ref is None:
            return None
        ref_stamp, ref_pos = ref[0], ref[1]
        if self.min_gap_ns and stamp_ns is not None and ref_stamp is not None and stamp_ns - ref_stamp < self.min_gap_ns:
            return "time_gap"
        if self.min_distance and position is not None and ref_pos is not None:
            if float(np.linalg.norm(np.subtract(position, ref_pos))) < self.min_distance:
                return "distance"
        return None

    def prefilter(self, stamp_ns: int | None, position=None) -> bool:
        """Cheap check before encoding; a rejected frame is counted and need not be encoded."""
        reason = self._motion_reason(self._candidate, stamp_ns, position)
        if reason:
            self.skipped[reason] += 1
            return False
        self._candidate = (stamp_ns, position)
        return True

    def accept(self, stamp_ns: int | None, position, global_desc: np.ndarray) -> bool:
        """Final decision for an encoded frame; an accepted one becomes the new reference."""
        reason = self._motion_reason(self._last, stamp_ns, position)
        if reason is None and self.min_change and self._last is not None:
            g = np.asarray(global_desc, np.float32).ravel()
            if 1.0 - float(g @ self._last[2]) < self.min_change:
                reason = "descriptor_change"
        if reason:
            self.skipped[reason] += 1
            return False
        self._last = (stamp_ns, position, np.asarray(global_desc, np.float32).ravel())
        return True

    @property
    def needs_descriptors(self) -> bool:
        return self.min_change > 0
