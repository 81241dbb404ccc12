"""Which retrieval candidate becomes a loop closure.

One rule, applied by :class:`vlad_localization.detector.LoopClosureDetector` for the ROS 2 node
(``~/loop_closure``) and ``vlad-localization replay``: walk the candidates in final rank order and
take the first one that is both *confident* (its ``score``, in [0, 1], reaches ``score_threshold``;
a candidate that was not re-ranked has a NaN score and never qualifies) and *a revisit* (its
keyframe was recorded at
least ``min_time_gap_s`` away from the query, so the robot's own recent frames never close a loop).
A keyframe without a time stamp cannot be a loop closure: the LIO-SAM interface needs its time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Protocol


class _Scored(Protocol):  # the fields of pipeline.Candidate this rule reads
    stamp_ns: int | None
    score: float


def score_of(patch_score: float, fused_score: float) -> float:
    """The score a loop closure is decided on: the fused score when computed, else the absolute
    patch score (NaN when neither: never a loop closure). Also for rows of ~/candidates or replay."""
    return patch_score if fused_score is None or math.isnan(fused_score) else fused_score


@dataclass(frozen=True)
class LoopClosure:
    """A decided loop closure: query and matched keyframe times (s), and the candidate itself."""

    t_query: float
    t_match: float
    rank: int
    candidate: object


def select_loop_closure(
    query_stamp_ns: int,
    candidates: Iterable[_Scored],
    score_threshold: float,
    min_time_gap_s: float,
) -> LoopClosure | None:
    """The best-ranked candidate with ``score >= score_threshold`` and
    ``|t_query - t_match| >= min_time_gap_s``, or None."""
    for rank, cand in enumerate(candidates):
        if cand.stamp_ns is None or not cand.score >= score_threshold:  # NaN: not re-ranked
            continue
        if abs(query_stamp_ns - cand.stamp_ns) * 1e-9 < min_time_gap_s:
            continue
        return LoopClosure(query_stamp_ns * 1e-9, cand.stamp_ns * 1e-9, rank, cand)
    return None
