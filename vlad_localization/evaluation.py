"""Recall and precision of a map + model on the user's own query images (``vlad-localization evaluate``).

Each query image is encoded once and searched once; the map's stored patch descriptors of its top
candidates are matched once, and both matchers score the same mutual matches. From that one pass
four rankings are read: ``global`` (NetVLAD similarity, the faiss order), ``spatial`` and ``ransac``
(the re-ranked head ordered by that matcher's absolute score) and ``fused`` (ordered by the fused
model's P(same place), what the pipeline does with ``matching.fusion: fused``). Candidates below
``localizer.rerank_k`` keep their global order after the re-ranked head in every ranking.

    truth = truth_same_index(len(queries), map_size)
    records = evaluate_queries(localizer, queries, truth)
    report = summarize(records, localizer.config.matching.fusion_model)

Loop closure: for every query the fused top-1 is accepted when its score reaches a threshold; it is
a true positive when it is a true match. Precision = TP / accepted, recall = TP / queries that have
a true match in the map (queries without one only add false positives).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vlad_localization.matching.fusion import descending_order, fused_scores

RANKINGS = ("global", "spatial", "ransac", "fused")
RECALL_AT = (1, 5, 10, 20)


# ----------------------------------------------------------------------------- ground truth
def truth_same_index(num_queries: int, map_size: int, tolerance: int = 0) -> list[set[int]]:
    """Query ``i`` shows the place of map keyframe ``i`` (and its ``tolerance`` neighbours)."""
    return [set(range(max(0, i - tolerance), min(map_size, i + tolerance + 1))) for i in range(num_queries)]


def truth_same_name(query_names: Sequence[str], map_names: Sequence[str], tolerance: int = 0) -> list[set[int]]:
    """Query ``q`` shows the place of the map image with the same file name (and its ``tolerance``
    neighbours in map order); a query whose name is not in the map has no true match."""
    index = {name: i for i, name in enumerate(map_names)}
    out = []
    for name in query_names:
        i = index.get(name)
        out.append(set() if i is None else set(range(max(0, i - tolerance), min(len(map_names), i + tolerance + 1))))
    return out


def truth_vpr_bench(path: str | Path, num_queries: int, map_size: int) -> list[set[int]]:
    """VPR-Bench ``ground_truth_new.npy``: rows ``[query_index, [reference_indices]]`` (both in file
    order: the query folder's order and the map's keyframe order)."""
    try:
        rows = np.load(path, allow_pickle=True)  # an object array is VPR-Bench's own format
    except (OSError, ValueError) as exc:
        raise ValueError(f"ground truth {path}: not a readable .npy file ({exc})") from None
    out: list[set[int]] = [set() for _ in range(num_queries)]
    for row in rows:
        try:
            q, refs = int(row[0]), {int(r) for r in np.atleast_1d(row[1])}
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"ground truth {path}: rows must be [query_index, [reference_indices]], got {row!r}") from None
        if not 0 <= q < num_queries or any(not 0 <= r < map_size for r in refs):
            raise ValueError(f"ground truth {path}: row {q} {sorted(refs)} is outside {num_queries} queries / "
                             f"{map_size} map keyframes: is it for these folders?")
        out[q] |= refs
    return out


def truth_within_radius(query_xy: Sequence, map_xy: Sequence, radius: float) -> list[set[int]]:
    """Map keyframes within ``radius`` (same units as the positions) of each query position (None:
    no position, no true match)."""
    known = [i for i, p in enumerate(map_xy) if p is not None]
    points = np.array([map_xy[i] for i in known], np.float64).reshape(-1, 3)
    out = []
    for q in query_xy:
        if q is None or not len(known):
            out.append(set())
            continue
        near = np.linalg.norm(points - np.asarray(q, np.float64), axis=1) <= radius
        out.append({known[i] for i in np.flatnonzero(near)})
    return out


# ----------------------------------------------------------------------------- one pass over the queries
@dataclass
class QueryRecord:
    """What one query's single pass produced: the global top-K and, for the re-ranked head (the
    first ``len(spatial)``), both matchers' absolute scores."""

    query: str
    map_ids: np.ndarray  # (K,) global rank order
    global_similarity: np.ndarray  # (K,)
    spatial: np.ndarray  # (n,) head
    ransac: np.ndarray  # (n,) head
    positives: set[int]  # map ids showing the query's place
    timings_ms: dict[str, float] = field(default_factory=dict)

    def probability(self, model: Mapping[str, float]) -> np.ndarray:
        n = len(self.spatial)
        return fused_scores(self.global_similarity[:n], self.spatial, self.ransac, model)

    def ranking(self, name: str, model: Mapping[str, float] | None = None) -> np.ndarray:
        """Map ids in the order of ranking ``name`` (one of :data:`RANKINGS`)."""
        n = len(self.spatial)
        scores = {"spatial": lambda: self.spatial, "ransac": lambda: self.ransac,
                  "fused": lambda: self.probability(model)}
        if name == "global":
            return self.map_ids
        if name not in scores:
            raise ValueError(f"unknown ranking {name!r}: use {', '.join(RANKINGS)}")
        return np.concatenate([self.map_ids[:n][descending_order(scores[name]())], self.map_ids[n:]])


def evaluation_config(config):
    """``config`` as evaluated: fused fusion (both matchers' evidence), top-K >= 20, re-ranking
    done by :func:`evaluate_queries` itself (one match per query for all rankings)."""
    from vlad_localization.config import apply_overrides

    if not config.matching.fusion_model:
        raise ValueError("evaluate needs matching.fusion_model (the presets ship one): use --config speed, "
                         "performance, storage or a YAML with base: <preset>")
    return apply_overrides(config, {"matching.fusion": "fused", "localizer.rerank": False,
                                    "localizer.top_k": max(config.localizer.top_k, max(RECALL_AT))},
                           where="evaluate")


def evaluate_queries(localizer, queries: Sequence, truth: Sequence[set[int]], progress: bool = True,
                     exclude: Sequence[np.ndarray] | None = None) -> list[QueryRecord]:
    """One encode, one search and one patch match per query (``localizer`` built with
    :func:`evaluation_config`). ``queries``: image paths or :class:`~vlad_localization.images.Frame`
    objects; ``exclude[i]``: map ids left out of query i's candidates (when the map holds the queries
    themselves: the query and the frames trivially similar to it)."""
    from tqdm import tqdm

    from vlad_localization.images import Frame, load_rgb

    if len(truth) != len(queries):
        raise ValueError(f"ground truth covers {len(truth)} queries, but there are {len(queries)} query images")
    rerank_k = max(1, int(localizer.config.localizer.rerank_k))
    top_k = int(localizer.config.localizer.top_k)
    records = []
    for i, (query, positives) in enumerate(zip(tqdm(queries, desc="evaluate", unit="query", disable=not progress),
                                               truth)):
        left_out = set() if exclude is None else {int(m) for m in exclude[i]}
        t0 = time.perf_counter()
        desc = localizer.encode(query.rgb if isinstance(query, Frame) else load_rgb(query))
        if isinstance(query, Frame) and query.loader is not None:
            query.image = None  # reloadable: keep the memory flat over long runs
        encode_ms = (time.perf_counter() - t0) * 1e3
        res = localizer.query(desc, k=top_k + len(left_out))
        cands = [c for c in res.candidates if c.map_id not in left_out][:top_k]
        head = cands[:rerank_k]
        t1 = time.perf_counter()
        match = localizer.match_candidates(res.map, desc, head)
        rerank_ms = (time.perf_counter() - t1) * 1e3
        records.append(QueryRecord(
            query.source if isinstance(query, Frame) else str(query), np.array([c.map_id for c in cands], np.int64),
            np.array([c.global_similarity for c in cands]),
            np.asarray(match.evidence["spatial"]), np.asarray(match.evidence["ransac"]), set(positives),
            {"encode": encode_ms, "search": res.timings["search_ms"], "rerank": rerank_ms},
        ))
    return records


# ----------------------------------------------------------------------------- metrics
def recall_at(records: Sequence[QueryRecord], name: str, model=None, ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """{"K": fraction of the queries with a true match whose top K of ranking ``name`` holds one}."""
    scored = [r for r in records if r.positives]
    out = {}
    for k in ks:
        hits = sum(bool(set(r.ranking(name, model)[:k].tolist()) & r.positives) for r in scored)
        out[str(k)] = hits / len(scored) if scored else float("nan")
    return out


def top1_scores(records: Sequence[QueryRecord], model) -> tuple[np.ndarray, np.ndarray, int]:
    """(fused score of each query's top-1, whether it is a true match, queries with a true match)."""
    scores, correct = [], []
    for r in records:
        p = r.probability(model)
        best = int(descending_order(p)[0]) if len(p) else None
        scores.append(p[best] if best is not None else 0.0)
        correct.append(best is not None and int(r.map_ids[best]) in r.positives)
    return np.array(scores, np.float64), np.array(correct, bool), sum(bool(r.positives) for r in records)


def precision_recall(scores: np.ndarray, correct: np.ndarray, num_positive: int) -> dict:
    """The accept-threshold curve of single-frame acceptance (accept when score >= threshold) and
    what a user picks from it (:func:`curve_summary`)."""
    curve = []
    for t in np.unique(scores):
        accepted = scores >= t
        tp = int(np.sum(accepted & correct))
        n = int(np.sum(accepted))
        curve.append([float(t), tp / n if n else 1.0, tp / num_positive if num_positive else 0.0])
    return curve_summary(curve)


def curve_summary(curve: list[list[float]]) -> dict:
    """``curve``: [threshold, precision, recall] rows, thresholds ascending (recall never increases
    with the threshold; precision 1 where nothing is accepted). ``auc``: area under precision(recall),
    step-wise from recall 0 (precision 1), in [0, 1]. Thresholds are null where no threshold reaches
    the precision (``recall_at_100_precision`` then 0)."""
    auc, last_recall = 0.0, 0.0
    for _, precision, recall in sorted(curve, key=lambda row: (row[2], -row[0])):
        auc += (recall - last_recall) * precision
        last_recall = max(last_recall, recall)

    def at_precision(level: float):
        rows = [row for row in curve if row[1] >= level and row[2] > 0]
        if not rows:
            return None, 0.0
        best = max(rows, key=lambda row: (row[2], -row[0]))  # most recall, then the lowest threshold
        return best[0], best[2]

    t100, r100 = at_precision(1.0)
    t99, _ = at_precision(0.99)
    return {"auc": float(min(max(auc, 0.0), 1.0)), "recall_at_100_precision": r100,
            "threshold_at_100_precision": t100, "threshold_at_99_precision": t99, "curve": curve}


# ----------------------------------------------------------------------------- loop closures along a run
# What a proposal's acceptance can be scored with: the rule's own score (fused, or the patch score),
# and each of its inputs alone (sequence_similarity: with sequence scoring on)
ACCEPTANCE_SCORES = ("score", "global_similarity", "spatial", "ransac", "sequence_similarity")


@dataclass
class FrameProposals:
    """One processed frame of a run: its stamp, camera, final candidates (``pipeline.Candidate``) and
    the keyframes that show its place, as ``(Store, map_id)`` (empty: no true match exists)."""

    stamp_ns: int
    camera: int
    candidates: list
    positives: set[tuple[int, int]]


@dataclass(frozen=True)
class _Scored:  # a proposal scored by one acceptance score, as the rule reads it
    stamp_ns: int
    store: int
    frame_id: str
    pose: object
    score: float


def acceptance_value(candidate, name: str) -> float:
    """``candidate``'s acceptance score ``name`` (:data:`ACCEPTANCE_SCORES`)."""
    if name == "score":
        return float(candidate.score)
    if name in ("global_similarity", "sequence_similarity"):
        return float(getattr(candidate, name))
    return float(candidate.evidence.get(name, np.nan))


def closure_curve(frames: Sequence[FrameProposals], rule_settings: Mapping, score: str = "score") -> dict:
    """The PR curve of what :class:`~vlad_localization.loop_closure.LoopClosureRule` accepts along a
    run, over every threshold, with the proposals scored by ``score`` (:data:`ACCEPTANCE_SCORES`):
    :func:`curve_summary` plus ``accepted_right`` (frames whose accepted closure is right, over the
    frames with a true match) at the lowest threshold. ``rule_settings``: the rule's other
    arguments (min_time_gap_s, consistency, consistency_window_s, consistency_window_m)."""
    from vlad_localization.loop_closure import LoopClosureRule, proposal_of

    gap = float(rule_settings.get("min_time_gap_s", 0.0))
    proposals = []
    for f in frames:
        found = proposal_of(f.stamp_ns, f.candidates, gap)
        if found is None:
            proposals.append((f, None, False))
            continue
        c = found[1]
        value = acceptance_value(c, score)
        proposals.append((f, _Scored(c.stamp_ns, c.store, c.frame_id, c.pose, value),
                          (c.store, c.map_id) in f.positives))
    num_positive = sum(bool(f.positives) for f in frames)
    values = sorted({p.score for _, p, _ in proposals if p is not None and np.isfinite(p.score)})
    curve = []
    for t in values:
        rule = LoopClosureRule(t, gap, **{k: v for k, v in rule_settings.items() if k != "min_time_gap_s"})
        tp = n = 0
        for f, p, right in proposals:
            closure, _ = rule.decide(f.stamp_ns, [] if p is None else [p], f.camera)
            if closure is not None:
                n += 1
                tp += right
        curve.append([float(t), tp / n if n else 1.0, tp / num_positive if num_positive else 0.0])
    summary = curve_summary(curve)
    summary["accepted_right"] = curve[0][2] if curve else 0.0
    summary["n_frames"], summary["n_frames_with_match"] = len(frames), num_positive
    return summary


def proposals_along(records: Sequence[QueryRecord], model: Mapping[str, float], keyframes: Sequence
                    ) -> list[FrameProposals]:
    """The queries as one run in their order (query i at i s), each with its candidates in fused order
    (``pipeline.Candidate`` with the map ``keyframes``' stamps, frame ids and positions, the fused score;
    the tail not re-ranked): what the node's acceptance rule sees in ``localize`` mode."""
    from vlad_localization.images.frames import NS_PER_S, Pose
    from vlad_localization.mapdb import Store
    from vlad_localization.pipeline import Candidate

    frames = []
    for i, r in enumerate(records):
        p = r.probability(model)
        order = list(descending_order(p)) + list(range(len(p), len(r.map_ids)))
        cands = []
        for j in order:
            kf = keyframes[int(r.map_ids[j])]
            pose = None if kf.position is None else Pose(tuple(kf.position))
            cands.append(Candidate(kf.id, kf.stamp_ns, kf.frame_id, kf.source, pose, float(r.global_similarity[j]),
                                   fused_score=float(p[j]) if j < len(p) else math.nan, run=kf.run))
        frames.append(FrameProposals(i * NS_PER_S, 0, cands, {(Store.PREBUILT, m) for m in r.positives}))
    return frames


def loop_closure_report(records: Sequence[QueryRecord], model: Mapping[str, float], lc=None, keyframes=None) -> dict:
    """The accept-threshold curve of the node's rule (``lc``: a ``LoopClosureConfig``): with
    ``consistency`` 1 every query's fused top-1 on its own (:func:`precision_recall`); above, the
    queries as one run through :class:`~vlad_localization.loop_closure.LoopClosureRule`
    (:func:`closure_curve`; no time gap: the map is another run)."""
    if lc is None or lc.consistency <= 1:
        return precision_recall(*top1_scores(records, model))
    settings = {"min_time_gap_s": 0.0, "consistency": lc.consistency, "consistency_window_s": lc.consistency_window_s,
                "consistency_window_m": lc.consistency_window_m}
    summary = closure_curve(proposals_along(records, model, keyframes), settings)
    return {key: summary[key] for key in ("auc", "recall_at_100_precision", "threshold_at_100_precision",
                                          "threshold_at_99_precision", "curve")}


def summarize(records: Sequence[QueryRecord], model: Mapping[str, float], lc=None, keyframes=None) -> dict:
    """The stable JSON report (keys listed in ``vlad-localization evaluate --help``); ``lc`` and the
    map's ``keyframes``: see :func:`loop_closure_report`."""
    num_positive = sum(bool(r.positives) for r in records)
    timing = {key: float(np.median([r.timings_ms[key] for r in records])) if records else float("nan")
              for key in ("encode", "search", "rerank")}
    return {
        "n_queries": len(records),
        "n_queries_with_match": num_positive,
        "rankings": {name: {"recall": recall_at(records, name, model)} for name in RANKINGS},
        "loop_closure": loop_closure_report(records, model, lc, keyframes),
        "timing_ms": {**timing, "statistic": "median per query"},
    }


def worst_failures(records: Sequence[QueryRecord], model, n: int) -> list[tuple[QueryRecord, int, int | None]]:
    """The ``n`` queries whose fused top-1 is wrong with the highest score: (record, wrong top-1
    map id, best-ranked true match (None when not among the candidates: the first true match))."""
    failures = []
    for r in records:
        if not r.positives:
            continue
        order = r.ranking("fused", model)
        if int(order[0]) in r.positives:
            continue
        found = [int(i) for i in order if int(i) in r.positives]
        failures.append((float(np.max(r.probability(model))), r, int(order[0]),
                         found[0] if found else min(r.positives)))
    failures.sort(key=lambda f: -f[0])
    return [f[1:] for f in failures[:n]]


def records_to_json(records: Sequence[QueryRecord]) -> list[dict]:
    """Plain-JSON form of the records (for caching a pass and refitting the fused model)."""
    return [{**dataclasses.asdict(r), "map_ids": r.map_ids.tolist(), "global_similarity": r.global_similarity.tolist(),
             "spatial": r.spatial.tolist(), "ransac": r.ransac.tolist(), "positives": sorted(r.positives)}
            for r in records]


def records_from_json(rows: Sequence[dict]) -> list[QueryRecord]:
    return [QueryRecord(r["query"], np.array(r["map_ids"], np.int64), np.array(r["global_similarity"]),
                        np.array(r["spatial"]), np.array(r["ransac"]), set(r["positives"]), r["timings_ms"])
            for r in rows]


__all__ = ["ACCEPTANCE_SCORES", "RANKINGS", "RECALL_AT", "FrameProposals", "QueryRecord", "acceptance_value",
           "closure_curve", "curve_summary", "loop_closure_report", "proposals_along", "evaluate_queries", "evaluation_config", "precision_recall",
           "records_from_json", "records_to_json", "recall_at", "summarize", "top1_scores", "truth_same_index",
           "truth_same_name", "truth_vpr_bench", "truth_within_radius", "worst_failures"]
