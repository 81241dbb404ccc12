"""Which retrieval candidate becomes a loop closure.

One rule, applied by :class:`vlad_localization.detector.LoopClosureDetector` for the ROS 2 node
(``~/loop_closure``) and ``vlad-localization replay``, and by the evaluation that calibrates its
threshold, so a PR curve is the curve of what the node publishes:

1. **The proposal** of a frame is its best-ranked candidate that is *a revisit*: its keyframe has a
   time stamp (the LIO-SAM interface needs it) recorded at least ``min_time_gap_s`` away from the
   query, so the robot's own recent frames never close a loop. No such candidate: ``no_candidate``.
2. **Confidence**: the proposal's ``score`` (in [0, 1]; NaN when not re-ranked) must reach
   ``score_threshold``, else ``below_threshold``.
3. **Temporal consistency** (``consistency`` = k frames; 1 = each frame on its own): the proposal is
   accepted only when the camera's last k frames all made confident proposals that are *neighbours*
   along the matched run, each with the one before - same store and camera run (``store``,
   ``frame_id``) and matched keyframes at most ``consistency_window_s`` apart in time (with
   ``consistency_window_m`` > 0 and positions on both keyframes: at most that many metres apart
   instead) - and that *advance as the query advances*: the match of the newest of the k frames is
   not older than that of the oldest (single steps may jitter back within the window: the matched
   keyframe nearest a place is noisy). A frame without a confident proposal or a jump starts the
   chain anew; a revisit walked in the opposite direction never advances. Such frames are held back
   as ``inconsistent``. Every processed frame counts, keyframe or not; only the last k proposals of
   each camera are kept.

The outcome of every frame is a :class:`Decision` (:data:`DECISIONS`), which ``replay`` writes and
the node counts on ``/diagnostics``.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

from vlad_localization.images.frames import nanoseconds

DECISIONS = {
    "accepted": "a loop closure",
    "no_candidate": "no candidate with a stamp outside the time gap",
    "below_threshold": "the proposal's score is below loop_closure.score_threshold",
    "inconsistent": "confident, but not yet `consistency` agreeing frames (held back)",
}


class _Scored(Protocol):  # the fields of pipeline.Candidate this rule reads
    stamp_ns: int | None
    score: float
    store: int  # mapdb.Store
    frame_id: str
    pose: object


def score_of(patch_score: float, fused_score: float) -> float:
    """The score a loop closure is decided on: the fused score when computed, else the absolute
    patch score (NaN when neither: never a loop closure). Also for rows of ~/candidates or replay."""
    return patch_score if fused_score is None or math.isnan(fused_score) else fused_score


@dataclass(frozen=True)
class LoopClosure:
    """A decided loop closure: query and matched keyframe stamps (ns), the rank of the candidate
    in the frame's final order, and the candidate itself."""

    query_stamp_ns: int
    match_stamp_ns: int
    rank: int
    candidate: object


@dataclass(frozen=True)
class Decision:
    """What the rule made of one frame: ``status`` (:data:`DECISIONS`), the proposal's rank (None
    without one) and how many consecutive frames agree with it (this one included; 0 without a
    confident proposal)."""

    status: str
    rank: int | None = None
    consistent_frames: int = 0

    def to_json(self) -> dict:
        return {"status": self.status, "rank": self.rank, "consistent_frames": self.consistent_frames}


def proposal_of(query_stamp_ns: int, candidates: Iterable[_Scored], min_time_gap_s: float) -> tuple[int, _Scored] | None:
    """(rank, candidate) of the best-ranked candidate with a stamp at least ``min_time_gap_s`` from
    the query, or None."""
    for rank, cand in enumerate(candidates):
        if cand.stamp_ns is not None and abs(query_stamp_ns - cand.stamp_ns) >= nanoseconds(min_time_gap_s):
            return rank, cand
    return None


def neighbours(previous: _Scored, current: _Scored, window_s: float, window_m: float = 0.0) -> bool:
    """Whether two consecutive confident proposals match neighbouring keyframes of one run (module
    doc, step 3)."""
    if previous.store != current.store or previous.frame_id != current.frame_id:
        return False
    p, q = getattr(previous, "pose", None), getattr(current, "pose", None)
    if window_m > 0 and p is not None and q is not None:
        return math.dist(p.position, q.position) <= window_m
    return abs(current.stamp_ns - previous.stamp_ns) <= nanoseconds(window_s)


class LoopClosureRule:
    """The rule of the module doc with the ``loop_closure`` section's settings; keeps the last
    ``consistency - 1`` proposals of each camera. One per detector (and per evaluated sequence)."""

    def __init__(self, score_threshold: float, min_time_gap_s: float, consistency: int = 1,
                 consistency_window_s: float = 10.0, consistency_window_m: float = 0.0):
        self._chains: dict[int, tuple[deque, int]] = {}  # camera -> (its chain's last k proposals, chain length)
        self.consistency = 0
        self.set(score_threshold, min_time_gap_s, consistency, consistency_window_s, consistency_window_m)

    @classmethod
    def from_config(cls, lc) -> "LoopClosureRule":
        """From a :class:`~vlad_localization.config.LoopClosureConfig`."""
        return cls(*_settings(lc))

    def configure(self, lc) -> None:
        """New settings from a ``LoopClosureConfig`` (the chains are kept unless k changes)."""
        self.set(*_settings(lc))

    def set(self, score_threshold: float, min_time_gap_s: float, consistency: int = 1,
            consistency_window_s: float = 10.0, consistency_window_m: float = 0.0) -> None:
        self.score_threshold = float(score_threshold)
        self.min_time_gap_s = float(min_time_gap_s)
        if max(1, int(consistency)) != self.consistency:
            self.consistency = max(1, int(consistency))
            self._chains.clear()
        self.window_s = float(consistency_window_s)
        self.window_m = float(consistency_window_m)

    def reset(self) -> None:
        self._chains.clear()

    def decide(self, query_stamp_ns: int, candidates: Sequence[_Scored], camera: int = 0
               ) -> tuple[LoopClosure | None, Decision]:
        """The frame's loop closure (or None) and its :class:`Decision`."""
        found = proposal_of(query_stamp_ns, candidates, self.min_time_gap_s)
        if found is None:
            self._chains.pop(camera, None)
            return None, Decision("no_candidate")
        rank, cand = found
        if not cand.score >= self.score_threshold:  # NaN (not re-ranked) is never confident
            self._chains.pop(camera, None)
            return None, Decision("below_threshold", rank)
        chain = self._chains.get(camera)
        if chain is None or not neighbours(chain[0][-1], cand, self.window_s, self.window_m):
            chain = (deque(maxlen=self.consistency), 0)
        recent, length = chain
        recent.append(cand)
        length += 1
        self._chains[camera] = (recent, length)
        if length < self.consistency or recent[-1].stamp_ns < recent[0].stamp_ns:
            return None, Decision("inconsistent", rank, length)
        return LoopClosure(int(query_stamp_ns), int(cand.stamp_ns), rank, cand), Decision("accepted", rank, length)


def _settings(lc) -> tuple:
    return lc.score_threshold, lc.min_time_gap_s, lc.consistency, lc.consistency_window_s, lc.consistency_window_m


def select_loop_closure(query_stamp_ns: int, candidates: Iterable[_Scored], score_threshold: float,
                        min_time_gap_s: float) -> LoopClosure | None:
    """The single-frame rule (``consistency`` 1): the proposal when its score reaches the threshold."""
    return LoopClosureRule(score_threshold, min_time_gap_s).decide(query_stamp_ns, list(candidates))[0]


__all__ = ["DECISIONS", "Decision", "LoopClosure", "LoopClosureRule", "neighbours", "proposal_of", "score_of",
           "select_loop_closure"]
