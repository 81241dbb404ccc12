"""Sequence scoring of retrieval candidates (SeqSLAM, Milford & Wyeth, ICRA 2012).

A single frame cannot tell two look-alike places apart; the frames before it usually can. A
candidate keyframe ``c`` of the current query frame ``q_0`` is scored with the last ``L`` query
frames ``q_0 .. q_{L-1}`` (newest first, every processed frame of the camera, keyframe or not)
against the keyframes at the same offsets back along ``c``'s run, for a range of relative speeds
``v``: frame ``q_i``, taken ``dt_i = t(q_0) - t(q_i)`` before the query, is compared with the
keyframe of ``c``'s run nearest to ``t(c) - v * dt_i``. The sequence similarity is

    S(c) = max over v of  mean over i of  sim(q_i, keyframe(c, v, i))

where ``sim`` is the inner product of the NetVLAD global descriptors (what the search already
ranks by; no extra encoding) - with ``contrast_window`` R > 0 (``loop_closure.sequence_contrast_window``)
enhanced as SeqSLAM does: each similarity minus the mean of the same frame's similarities to the R
keyframes either side along the run, over their standard deviation, so a change of season or light
that makes every place of the other condition look alike cancels out (:func:`contrasted`) - and the
mean runs over the terms that exist: a query frame older than
the history, or an offset before the run's first keyframe, drops out (so the first frames of a run
are scored on fewer terms, a single frame on its own similarity). A run is the keyframes of one
``(run, frame_id)`` of a store, in time order: a prebuilt map's mapping runs, or one camera of
this run. Offsets never reach keyframes newer than the search allows (``max_stamp_ns``).

:func:`sequence_scores` is the rule, on a similarity lookup; :class:`QueryHistory` keeps the last
frames of each camera and :class:`RunTimeline` a store's runs in time order (the detector owns both).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

SimilarityLookup = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (frame rows, keyframe columns) -> sims
CONTRAST_EPS = 1e-3  # added to the local standard deviation (similarities are in [-1, 1])


def sequence_offsets(candidate_index: np.ndarray, keyframe_stamps: np.ndarray, query_ages_ns: np.ndarray,
                     speeds: Sequence[float], usable: np.ndarray | None = None) -> np.ndarray:
    """(C, V, L) index into ``keyframe_stamps`` (one run, ascending) of the keyframe compared with
    query frame ``i`` (``query_ages_ns[i]`` old, 0 for the query itself) for candidate ``c`` at speed
    ``v``: the keyframe nearest to ``t(c) - v * age``. -1 (no term) where that time lies more than the
    run's median keyframe spacing before its first keyframe, or the keyframe is not ``usable`` (a
    mask over the run: newer than the search allows, evicted)."""
    stamps = np.asarray(keyframe_stamps, np.int64)
    cand = np.asarray(candidate_index, np.int64)
    ages = np.asarray(query_ages_ns, np.float64)
    v = np.asarray(speeds, np.float64)
    target = stamps[cand][:, None, None] - v[None, :, None] * ages[None, None, :]  # (C, V, L)
    right = np.clip(np.searchsorted(stamps, target), 0, len(stamps) - 1)
    left = np.clip(right - 1, 0, len(stamps) - 1)
    nearest = np.where(np.abs(stamps[left] - target) <= np.abs(stamps[right] - target), left, right)
    spacing = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.0
    outside = target < stamps[0] - spacing  # before the run began
    if usable is not None:
        outside |= ~np.asarray(usable, bool)[nearest]
    return np.where(outside, -1, nearest)


def contrasted(similarity: SimilarityLookup, rows: np.ndarray, cols: np.ndarray, run_length: int,
               usable: np.ndarray | None, window: int) -> np.ndarray:
    """SeqSLAM's local contrast enhancement of the terms ``sim(q_rows, keyframe_cols)``: each minus
    the mean of the same frame's similarities to the usable keyframes within ``window`` positions
    either side along the run, divided by their standard deviation. A place that only looks like
    everything around it (a season, a corridor) scores ~0; the one place that stands out, high."""
    offsets = np.arange(-window, window + 1)
    near = cols[:, None] + offsets[None, :]
    valid = (near >= 0) & (near < run_length)
    if usable is not None:
        valid &= np.asarray(usable, bool)[np.clip(near, 0, run_length - 1)]
    values = np.full(near.shape, np.nan)
    r = np.broadcast_to(rows[:, None], near.shape)
    if valid.any():
        values[valid] = similarity(r[valid], near[valid])
    centre = similarity(rows, cols)
    mean = np.nanmean(np.where(valid, values, np.nan), axis=1)
    spread = np.nanstd(np.where(valid, values, np.nan), axis=1)
    return (centre - mean) / (spread + CONTRAST_EPS)


def run_contrast(row: np.ndarray, usable: np.ndarray, window: int) -> np.ndarray:
    """:func:`contrasted` for every keyframe of one run at once: ``row`` (N,) one frame's
    similarities in run order, ``usable`` (N,) which count; -inf where not usable."""
    x = np.where(usable, row, 0.0).astype(np.float64)
    w = usable.astype(np.float64)

    def windowed(a):
        c = np.concatenate([[0.0], np.cumsum(a)])
        hi = np.minimum(np.arange(len(a)) + window + 1, len(a))
        lo = np.maximum(np.arange(len(a)) - window, 0)
        return c[hi] - c[lo]

    n = np.maximum(windowed(w), 1.0)
    mean = windowed(x) / n
    spread = np.sqrt(np.maximum(windowed(x * x) / n - mean ** 2, 0.0))
    return np.where(usable, (row - mean) / (spread + CONTRAST_EPS), -np.inf)


def sequence_scores(similarity: SimilarityLookup, candidate_index: np.ndarray, keyframe_stamps: np.ndarray,
                    query_ages_ns: np.ndarray, speeds: Sequence[float],
                    usable: np.ndarray | None = None, contrast_window: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(S (C,), best speed (C,)) of the candidates ``candidate_index`` of one run (see the module
    doc). ``similarity(rows, cols)`` gives ``sim(q_rows, keyframe_cols)`` elementwise (rows index
    ``query_ages_ns``, columns ``keyframe_stamps``). ``contrast_window`` > 0: the terms are
    :func:`contrasted` over that many keyframes either side."""
    idx = sequence_offsets(candidate_index, keyframe_stamps, query_ages_ns, speeds, usable)
    rows = np.broadcast_to(np.arange(idx.shape[2]), idx.shape)
    valid = idx >= 0
    sims = np.zeros(idx.shape, np.float64)
    if valid.any() and contrast_window > 0:
        sims[valid] = contrasted(similarity, rows[valid], idx[valid], len(keyframe_stamps), usable, contrast_window)
    elif valid.any():
        sims[valid] = similarity(rows[valid], idx[valid])
    count = valid.sum(axis=2)
    mean = np.where(count > 0, sims.sum(axis=2) / np.maximum(count, 1), -np.inf)  # (C, V)
    best = np.argmax(mean, axis=1)
    return mean[np.arange(len(best)), best], np.asarray(speeds, np.float64)[best]


@dataclass
class _Frame:
    stamp_ns: int
    descriptor: np.ndarray  # (D,) float32 global descriptor


class QueryHistory:
    """The last ``length`` processed frames of each camera (stamp and global descriptor), bounded."""

    def __init__(self, length: int):
        self.length = max(1, int(length))
        self._frames: dict[int, deque[_Frame]] = {}

    def push(self, camera: int, stamp_ns: int, descriptor: np.ndarray) -> None:
        frames = self._frames.setdefault(camera, deque(maxlen=self.length))
        if frames and stamp_ns <= frames[-1].stamp_ns:  # a camera's clock went back (a bag looped): start over
            frames.clear()
        frames.append(_Frame(int(stamp_ns), np.asarray(descriptor, np.float32).reshape(-1)))

    def frames(self, camera: int) -> tuple[np.ndarray, np.ndarray]:
        """(ages in ns (L',) newest first, starting at 0; descriptors (L', D)) of the camera's frames."""
        frames = list(reversed(self._frames.get(camera, ())))
        if not frames:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        stamps = np.array([f.stamp_ns for f in frames], np.int64)
        return stamps[0] - stamps, np.stack([f.descriptor for f in frames])


class RunTimeline:
    """A store's keyframes grouped by run (``(run, frame_id)``), each group in time order, with the
    store's row lookup: which keyframes a candidate's sequence is compared with."""

    def __init__(self):
        self._stamps: dict[tuple, list[int]] = {}
        self._ids: dict[tuple, list[int]] = {}
        self._where: dict[int, tuple[tuple, int]] = {}  # keyframe id -> (group, position)
        self._arrays: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.first_id = 0  # keyframes with lower ids were forgotten (evicted from the store)
        self._kept_from = 0  # the lowest id still held

    @classmethod
    def of(cls, keyframes) -> "RunTimeline":
        """A timeline of existing keyframes (a prebuilt map's), in any order."""
        timeline = cls()
        rows = sorted((k for k in keyframes if k.stamp_ns is not None), key=lambda k: (k.run, k.frame_id, k.stamp_ns))
        for k in rows:
            timeline.add(k.id, k.stamp_ns, (k.run, k.frame_id))
        return timeline

    def add(self, keyframe_id: int, stamp_ns: int, group: tuple) -> None:
        """Append a keyframe (stamps of one group arrive in ascending order; an older one starts the
        group anew, as a bag replayed from its start does)."""
        stamps = self._stamps.setdefault(group, [])
        if stamps and stamp_ns < stamps[-1]:
            for old in self._ids[group]:
                self._where.pop(old, None)
            stamps.clear()
            self._ids[group].clear()
        ids = self._ids.setdefault(group, [])
        self._where[int(keyframe_id)] = (group, len(ids))
        stamps.append(int(stamp_ns))
        ids.append(int(keyframe_id))
        self._arrays.pop(group, None)

    def forget_before(self, first_id: int) -> None:
        """Forget keyframes with ids below ``first_id`` (evicted from a store whose ids are consecutive
        and grow with time). Amortised: the lists are compacted once the forgotten ones are as many as
        the rest; until then a caller masks them with :attr:`first_id`."""
        self.first_id = max(self.first_id, int(first_id))
        if (self.first_id - self._kept_from) * 2 < len(self._where):  # the store's ids are consecutive
            return
        self._kept_from = self.first_id
        for group, ids in self._ids.items():
            keep = [k for k, i in enumerate(ids) if i >= self.first_id]
            self._ids[group] = [ids[k] for k in keep]
            self._stamps[group] = [self._stamps[group][k] for k in keep]
            self._arrays.pop(group, None)
        self._where = {i: (group, k) for group, ids in self._ids.items() for k, i in enumerate(ids)}

    def groups(self) -> list[tuple]:
        """The runs (``(run, frame_id)``) held."""
        return [g for g, ids in self._ids.items() if ids]

    def locate(self, keyframe_id: int) -> tuple[tuple, int] | None:
        """(group, position in the group) of a keyframe, None when it has no stamp (not in a run)."""
        return self._where.get(int(keyframe_id))

    def group(self, group: tuple) -> tuple[np.ndarray, np.ndarray]:
        """(stamps, ids) of one group, ascending in time."""
        arrays = self._arrays.get(group)
        if arrays is None:
            arrays = self._arrays[group] = (np.array(self._stamps[group], np.int64), np.array(self._ids[group], np.int64))
        return arrays

    def __len__(self) -> int:
        return len(self._where)


__all__ = ["QueryHistory", "RunTimeline", "contrasted", "run_contrast", "sequence_offsets", "sequence_scores"]
