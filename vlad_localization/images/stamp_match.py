"""Pairing each camera frame with the message of another topic nearest in stamp (a registered depth
image, the right image of a stereo pair), whichever of the two arrives first.

:meth:`StampMatcher.add` keeps the other topic's last :data:`KEEP` messages; :meth:`StampMatcher.pair`
gives a frame the nearest one within the tolerance already there and a :class:`Pairing` that a
message arriving later still fills, until a message stamped at or after the frame shows that no
nearer one will come (a topic's messages arrive in stamp order). Neither call blocks: only
:meth:`Pairing.wait` does (the node's worker thread, never its executor).
"""
from __future__ import annotations

import threading
import time
from collections import deque

DEFAULT_TOLERANCE_S = 0.02  # the node's depth_tolerance_s default, and what bag reading uses
KEEP = 8  # messages of the other topic kept (0.3-0.4 s at 20-30 Hz, enough for the topics' skew)
OPEN = 4  # frames still waiting for a message; an older one stops waiting with what it has


class Pairing:
    """One frame's match: ``msg`` (None until found), final once ``done``."""

    def __init__(self, stamp_ns: int, tolerance_ns: int, cond: threading.Condition):
        self.stamp_ns, self.tolerance_ns, self._cond = int(stamp_ns), int(tolerance_ns), cond
        self.msg = None
        self.msg_stamp_ns: int | None = None
        self.done = False

    def offer(self, stamp_ns: int, msg) -> None:
        """Take ``msg`` if within the tolerance and nearer than the one held (under the matcher's lock)."""
        gap = abs(stamp_ns - self.stamp_ns)
        if gap <= self.tolerance_ns and (self.msg_stamp_ns is None or gap < abs(self.msg_stamp_ns - self.stamp_ns)):
            self.msg, self.msg_stamp_ns = msg, int(stamp_ns)
        self.done = self.done or stamp_ns >= self.stamp_ns

    def wait(self, timeout_s: float):
        """The matched message, waiting up to ``timeout_s`` for one still to come; None when none."""
        with self._cond:
            if timeout_s > 0:
                self._cond.wait_for(lambda: self.done, timeout_s)
            return self.msg


class StampMatcher:
    """Thread-safe pairing by stamp (ns) within ``tolerance_ns`` (0: exact stamps only)."""

    def __init__(self, tolerance_ns: int, keep: int = KEEP):
        if tolerance_ns < 0:
            raise ValueError(f"the stamp tolerance must be >= 0, got {tolerance_ns}")
        self.tolerance_ns = int(tolerance_ns)
        self._cond = threading.Condition()
        self._kept: deque[tuple[int, object]] = deque(maxlen=keep)
        self._open: list[Pairing] = []
        self.last_added: float | None = None  # time.monotonic() of the last message

    def add(self, stamp_ns: int, msg) -> None:
        """A message of the other topic (executor callback)."""
        with self._cond:
            self.last_added = time.monotonic()
            self._kept.append((int(stamp_ns), msg))
            for pairing in self._open:
                pairing.offer(int(stamp_ns), msg)
            self._open = [p for p in self._open if not p.done]
            self._cond.notify_all()

    def pair(self, stamp_ns: int) -> Pairing:
        """The pairing of a frame stamped ``stamp_ns`` (executor callback; never blocks)."""
        with self._cond:
            pairing = Pairing(stamp_ns, self.tolerance_ns, self._cond)
            for stamp, msg in self._kept:
                pairing.offer(stamp, msg)
            if not pairing.done:
                self._open.append(pairing)
                for stale in self._open[:-OPEN]:
                    stale.done = True
                del self._open[:-OPEN]
                self._cond.notify_all()
            return pairing
