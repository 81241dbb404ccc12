"""Positives, negatives and hard-negative mining (Arandjelovic et al., NetVLAD, CVPR 2016, Sec. 4).

Two frames show the same place (potential positives) when their positions are within
``positive_m`` (and, optionally, their headings within ``positive_deg``); they are different places
(negatives) beyond ``negative_m``; in between they are neither. Frames of one run closer in time
than ``min_gap_s`` are never positives of each other (they are trivially similar), so positives
come from another run or from a revisit of the same run.

Mining, as the paper's weakly supervised triplet ranking loss: a query's positive is its potential
positive nearest in descriptor space (the best match), its negatives the hardest (nearest) of a
random sample of its negatives plus the hard negatives it had last epoch; descriptors come from a
cache of the current model, refreshed every epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from vlad_localization.images.frames import nanoseconds

from .data import TrainingDataError, TrainingFrames


@dataclass(frozen=True)
class PlaceCriteria:
    """When two frames show the same place, and when different places."""

    positive_m: float = 10.0
    negative_m: float = 25.0
    positive_deg: float | None = None
    min_gap_s: float = 30.0

    def check(self) -> "PlaceCriteria":
        if not 0 < self.positive_m <= self.negative_m:
            raise TrainingDataError(f"need 0 < --positive-m ({self.positive_m}) <= --negative-m ({self.negative_m})")
        if self.positive_deg is not None and not 0 < self.positive_deg <= 180:
            raise TrainingDataError(f"--positive-deg must be in (0, 180], got {self.positive_deg}")
        if self.min_gap_s < 0:
            raise TrainingDataError(f"--min-gap-s must be >= 0, got {self.min_gap_s}")
        return self


@dataclass
class PlacePairs:
    """Per frame of a set: ``positives[i]`` (indices of the same place) and ``near[i]`` (every index
    within ``negative_m``, itself included: never a negative); negatives are all the others."""

    positives: list[np.ndarray]
    near: list[np.ndarray]

    @property
    def queries(self) -> np.ndarray:
        """Frames with at least one positive (the ones that can be trained or evaluated)."""
        return np.array([i for i, p in enumerate(self.positives) if len(p)], np.int64)

    def negatives(self, i: int, n: int) -> np.ndarray:
        """All negatives of frame ``i`` in a set of ``n`` frames."""
        mask = np.ones(n, bool)
        mask[self.near[i]] = False
        return np.flatnonzero(mask)


def place_pairs(data: TrainingFrames, criteria: PlaceCriteria) -> PlacePairs:
    """The positives and near frames of every frame of ``data`` (within ``data`` only)."""
    within_pos = _within(data.position, criteria.positive_m)
    within_neg = _within(data.position, criteria.negative_m)
    positives = []
    for i, cand in enumerate(within_pos):
        cand = np.array(sorted(cand), np.int64)
        keep = ~trivially_similar(data, i, criteria.min_gap_s, cand)
        if criteria.positive_deg is not None:
            turn = np.abs((data.yaw[cand] - data.yaw[i] + math.pi) % (2 * math.pi) - math.pi)
            keep &= np.degrees(turn) <= criteria.positive_deg
        positives.append(cand[keep])
    near = [np.array(sorted(c), np.int64) for c in within_neg]
    return PlacePairs(positives, near)


def trivially_similar(data: TrainingFrames, i: int, min_gap_s: float, among: np.ndarray | None = None) -> np.ndarray:
    """Mask over ``among`` (default: every frame) of the frames trivially similar to frame ``i``:
    itself and the frames of its run closer in time than ``min_gap_s``. They are never its
    positives and are left out of its retrieval (validation recall, calibration)."""
    among = np.arange(len(data)) if among is None else np.asarray(among, np.int64)
    near = np.abs(data.stamp_ns[among] - data.stamp_ns[i]) < nanoseconds(min_gap_s)
    return (among == i) | ((data.run[among] == data.run[i]) & near)


def _within(positions: np.ndarray, radius: float) -> list[np.ndarray]:
    """Per position, the indices of the positions within ``radius`` (itself included): an exact
    faiss range search (positions re-centred so float32 keeps centimetres on long routes)."""
    x = np.ascontiguousarray(positions - positions.mean(axis=0), dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    lims, _, ids = index.range_search(x, float(radius) ** 2 * (1 + 1e-6))
    return [ids[lims[i]:lims[i + 1]] for i in range(len(x))]


def require_positives(pairs: PlacePairs, criteria: PlaceCriteria, what: str) -> np.ndarray:
    """The query frames of ``pairs``, or a :class:`TrainingDataError` saying how to get some."""
    queries = pairs.queries
    if not len(queries):
        raise TrainingDataError(
            f"no positives found in the {what} places: no two frames of different runs (or of one run more than "
            f"--min-gap-s {criteria.min_gap_s:g} s apart) lie within --positive-m {criteria.positive_m:g} m"
            + (f" and --positive-deg {criteria.positive_deg:g}" if criteria.positive_deg else "")
            + "; give a second run of the same route (or one that revisits), or raise --positive-m")
    return queries


@dataclass
class Triplet:
    """A training tuple: query, its best positive and its hardest negatives (frame indices)."""

    query: int
    positive: int
    negatives: np.ndarray


def mine_triplets(desc: np.ndarray, pairs: PlacePairs, queries: np.ndarray, rng: np.random.Generator,
                  num_negatives: int = 10, sample: int = 1000, margin: float = 0.1 ** 0.5,
                  previous: dict[int, np.ndarray] | None = None) -> list[Triplet]:
    """Triplets of ``queries`` from L2-normalised descriptors ``desc`` (N, D) of the current model.

    Negatives: the ``num_negatives`` nearest of ``sample`` random negatives plus ``previous[q]``
    (last epoch's hard negatives, updated in place), kept only when they violate the margin
    (``d(q, n) < d(q, p) + margin``); a query with none is skipped (it already satisfies the loss).
    ``sample=0`` ranks all negatives (deterministic, for validation).
    """
    n = len(desc)
    out = []
    for q in queries:
        pos = pairs.positives[q]
        sims_pos = desc[pos] @ desc[q]
        p = int(pos[int(np.argmax(sims_pos))])
        d_pos = math.sqrt(max(0.0, 2.0 - 2.0 * float(sims_pos.max())))
        negs = pairs.negatives(int(q), n)
        if not len(negs):
            continue
        if sample and len(negs) > sample:
            negs = rng.choice(negs, sample, replace=False)
        if previous is not None and int(q) in previous:
            negs = np.union1d(negs, previous[int(q)])
        d_neg = np.sqrt(np.clip(2.0 - 2.0 * (desc[negs] @ desc[q]), 0.0, None))
        order = np.argsort(d_neg, kind="stable")[:num_negatives]
        hard = negs[order][d_neg[order] < d_pos + margin]
        if previous is not None:
            previous[int(q)] = negs[order]
        if len(hard):
            out.append(Triplet(int(q), p, hard.astype(np.int64)))
    return out


def recall_at_k(desc: np.ndarray, data: TrainingFrames, pairs: PlacePairs, criteria: PlaceCriteria,
                ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K of the frames with a positive, retrieving among the other frames of the set (frames of
    the query's run closer in time than ``min_gap_s`` are left out of its database)."""
    queries = pairs.queries
    if not len(queries):
        return {str(k): float("nan") for k in ks}
    sims = desc[queries] @ desc.T
    hits = {k: 0 for k in ks}
    for row, q in enumerate(queries):
        s = sims[row]
        s[trivially_similar(data, int(q), criteria.min_gap_s)] = -np.inf
        top = np.argsort(-s, kind="stable")[: max(ks)]
        found = np.isin(top, pairs.positives[q])
        for k in ks:
            hits[k] += bool(found[:k].any())
    return {str(k): hits[k] / len(queries) for k in ks}
