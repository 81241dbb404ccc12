"""Fitting the ``fused`` score (``matching.fusion_model``) and the loop-closure threshold from
evaluation records (:class:`~vlad_localization.evaluation.QueryRecord`: per query, the global
top-K and both matchers' absolute scores of the re-ranked head, with ground truth).

The fused model is P(same place) = sigmoid(bias + a . x + g . (x - x_top)) over the candidate's
three scores x = (global similarity, spatial, RANSAC) (:data:`SCORES`), where ``x_top`` are the scores
of the query's best-ranked candidate (:func:`~vlad_localization.matching.fusion.fused_features`).
Two questions, two fits, all weights non-negative (more evidence never lowers the probability):

1. **Ranking** a query's candidates: they are ordered by ``(a + g) . x``. The direction of ``a + g``
   is the L2-regularised conditional logit that ranks each query's true match first
   (:func:`ranking_direction`: the softmax over a query's re-ranked candidates should pick its true
   match; queries with no true or no wrong candidate there carry no information).
2. **Accepting** a query's proposal (its best-ranked candidate, whose gaps are 0): it is scored by
   ``sigmoid(bias + a . x_top)``, the score ``loop_closure.score_threshold`` is compared with. The
   direction of ``a`` is chosen so that this score orders the proposals at least as well as each of
   its inputs alone - recall at 100 % precision and PR AUC, on every set given (:func:`acceptance_direction`)
   - then ``bias`` and the scale by logistic regression on the proposals (:func:`calibrate`).
   ``g = lambda * ranking direction - a`` (``lambda`` as small as keeps ``g >= 0``, then fitted on every
   candidate) so the ranking of step 1 is kept.

While sequence scoring is on, a model of its own over the four scores (the three and the sequence
similarity S) is fitted the same way on runs (:func:`fit_sequence`: each frame a query, its proposal
the best-ranked candidate outside the time gap), one per kind of S (``choices.SEQUENCE_KINDS``).

Each set weighs the same in every fit. ``benchmarks/fit_fusion.py`` runs this on the shared data
sets; ``vlad-localization calibrate`` on a user's runs.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np

from vlad_localization.choices import FUSED_FEATURES, SEQUENCE_FEATURES, sequence_keys
from vlad_localization.matching.fusion import descending_order, fused_scores, gap_name, rank_weights

FEATURES = list(FUSED_FEATURES)
SCORES = ("global_similarity", "spatial", "ransac")  # the ranked scores; each has a ``*_gap`` twin
SEQUENCE_SCORES = SCORES + ("sequence_similarity",)  # while sequence scoring is on
RANKING_L2 = 1.0  # chosen on the shared sets: 0.1 and weaker miss Gardens Point in-sample, 0.2 to 10 meet the target
CALIBRATION_L2 = 0.1
GRID_STEPS = 40  # the acceptance direction is searched on the simplex in steps of 1/GRID_STEPS


# ----------------------------------------------------------------------------- evidence tables
def head_evidence(record) -> tuple[np.ndarray, np.ndarray]:
    """(global, spatial and RANSAC scores (n, 3), same place (n,)) of a query's n re-ranked candidates."""
    n = len(record.spatial)
    scores = np.stack([record.global_similarity[:n], record.spatial, record.ransac], axis=1)
    return scores, np.array([int(i) in record.positives for i in record.map_ids[:n]], bool)


def proposal_table(records, rank_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores (n, 3) of each query's best-ranked candidate, whether it is a true match, queries with
    a true match): what acceptance is decided on."""
    rows, correct = [], []
    for r in records:
        x, y = head_evidence(r)
        if not len(x):
            continue
        best = int(descending_order(x @ rank_weights)[0])
        rows.append(x[best])
        correct.append(bool(y[best]))
    return (np.array(rows, np.float64).reshape(-1, 3), np.array(correct, bool),
            sum(bool(r.positives) for r in records))


def equal_per_set(counts) -> np.ndarray:
    """Weights of the items of sets of ``counts`` items: each set weighs the same, the weights sum to
    the number of items."""
    w = np.concatenate([np.full(c, 1.0 / c) for c in counts if c])
    return w * len(w) / w.sum()


# ----------------------------------------------------------------------------- constrained convex fits
def minimise_on_faces(loss, faces, nonnegative) -> np.ndarray:
    """argmin of a convex ``loss(phi) -> (value, gradient, Hessian)`` subject to phi[nonnegative] >= 0:
    Newton's method within each face (phi = T @ theta, one matrix T per set of active constraints),
    then the lowest value whose phi is feasible (the exact constrained optimum when ``faces`` hold the
    polytope's faces)."""
    best_value, best = np.inf, None
    for t in faces:
        theta = np.zeros(t.shape[1])
        for _ in range(100):
            _, grad, hess = loss(t @ theta)
            step = np.linalg.solve(t.T @ hess @ t + 1e-9 * np.eye(t.shape[1]), t.T @ grad)
            theta -= step
            if np.abs(step).max() < 1e-10:
                break
        phi = t @ theta
        value = loss(phi)[0]
        if np.all(phi[nonnegative] >= -1e-12) and value < best_value:
            best_value, best = value, phi
    if best is None:
        raise ValueError("no face holds a feasible optimum")
    best[nonnegative] = np.maximum(best[nonnegative], 0.0)
    return best


def query_groups(per_set: Mapping[str, Sequence]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(scores (n, 3), true match (n,), weight) of every query whose re-ranked head holds a true and a
    wrong match (:func:`equal_per_set`)."""
    per_query = [[(x, y) for x, y in map(head_evidence, records) if y.any() and not y.all()]
                 for records in per_set.values()]
    weights = equal_per_set([len(rows) for rows in per_query])
    return [(x, y, w) for (x, y), w in zip([row for rows in per_query for row in rows], weights)]


def conditional_logit(groups, l2: float):
    """Loss of ranking weights phi: minus the log-probability that the softmax of phi . scores over a
    query's re-ranked candidates picks its true match (mean over several), weighted, + l2/2 |phi|^2."""
    def loss(phi):
        value, grad, hess = 0.5 * l2 * phi @ phi, l2 * phi, l2 * np.eye(len(phi))
        for x, y, w in groups:
            z = x @ phi
            e = np.exp(z - z.max())
            p = e / e.sum()
            mean = x.T @ p
            value += w * (z.max() + np.log(e.sum()) - z[y].mean())
            grad += w * (mean - x[y].mean(axis=0))
            hess += w * ((x.T * p) @ x - np.outer(mean, mean))
        return value, grad, hess
    return loss


def ranking_direction(per_set: Mapping[str, Sequence], l2: float = RANKING_L2) -> np.ndarray:
    """Non-negative weights of :data:`SCORES` that rank each query's true match first: McFadden's
    conditional logit over the query's re-ranked candidates (a ranking objective, not a per-pair one)."""
    return _ranking_weights(query_groups(per_set), len(SCORES), l2)


def _ranking_weights(groups, n: int, l2: float = RANKING_L2) -> np.ndarray:
    """The non-negative minimiser of :func:`conditional_logit` over ``n`` scores (every face)."""
    faces = [np.eye(n)[:, list(c)] for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]
    return minimise_on_faces(conditional_logit(groups, l2), faces, np.arange(n))


def logistic(a: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float):
    """Loss of phi = (bias, weights): the weighted logistic loss of design ``a`` (a column of ones
    first) + l2/2 |weights|^2."""
    reg = np.diag([0.0] + [l2] * (a.shape[1] - 1))  # the bias is not shrunk

    def loss(phi):
        z = a @ phi
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        value = np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * phi @ reg @ phi
        return value, a.T @ (w * (p - y)) + reg @ phi, (a * (w * p * (1 - p))[:, None]).T @ a + reg
    return loss


# ----------------------------------------------------------------------------- acceptance
def acceptance_metrics(scores: np.ndarray, correct: np.ndarray, num_positive: int) -> tuple[float, float]:
    """(recall at 100 % precision, PR AUC) of accepting the proposals whose score reaches a threshold:
    what :func:`~vlad_localization.evaluation.precision_recall` reports, sorted once (O(n log n))."""
    scores = np.asarray(scores, np.float64)
    correct = np.asarray(correct, bool)
    if not len(scores) or not num_positive:
        return 0.0, 0.0
    thresholds, first = np.unique(-scores, return_index=True)  # descending scores
    order = np.argsort(-scores, kind="stable")
    tp_sorted = np.cumsum(correct[order])
    # accepted at threshold t: every score >= t, i.e. up to the last position of that value in sorted order
    last = np.searchsorted(-scores[order], thresholds, side="right") - 1
    accepted = last + 1
    tp = tp_sorted[last]
    precision = tp / accepted
    recall = tp / num_positive
    perfect = (precision >= 1.0) & (recall > 0)
    r100 = float(recall[perfect].max()) if perfect.any() else 0.0
    # step-wise area from recall 0 (precision 1), rows by increasing recall (thresholds descending)
    auc = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return r100, min(max(auc, 0.0), 1.0)


def dominance_margin(tables, w: np.ndarray) -> float:
    """The smallest, over the tables and both metrics, of (metric of ordering the proposals by
    ``x . w``) minus (the best metric of one score alone): >= 0 when ``w`` orders every table's
    proposals at least as well as each input on its own."""
    margin = np.inf
    for x, y, n in tables:
        if not len(y) or y.all() or not y.any():
            continue  # nothing to order
        combined = acceptance_metrics(x @ w, y, n)
        alone = [acceptance_metrics(x[:, k], y, n) for k in range(x.shape[1])]
        for m in range(2):
            margin = min(margin, combined[m] - max(a[m] for a in alone))
    return float(margin) if np.isfinite(margin) else 0.0


def simplex_grid(dims: int, steps: int):
    """Every non-negative weight vector of ``dims`` entries in multiples of 1/``steps`` summing to 1."""
    for cut in itertools.combinations(range(steps + dims - 1), dims - 1):  # stars and bars
        parts = np.diff(np.concatenate([[-1], cut, [steps + dims - 1]])) - 1
        yield parts.astype(np.float64) / steps


def acceptance_direction(tables, steps: int = GRID_STEPS) -> np.ndarray:
    """Non-negative weights (summing to 1) of the proposal's scores for acceptance: on the simplex
    grid, those whose ordering of every table's proposals is no worse than any input alone
    (:func:`dominance_margin` >= 0; else the largest margin), and among them the best mean AUC."""
    best_key, best = None, None
    for w in simplex_grid(tables[0][0].shape[1], steps):
        margin = dominance_margin(tables, w)
        auc = np.mean([acceptance_metrics(x @ w, y, n)[1] for x, y, n in tables if len(y)])
        key = (min(margin, 0.0), auc)
        if best_key is None or key > best_key:
            best_key, best = key, w
    return best


def sphere_directions(degrees: float = 2.0):
    """Unit vectors of three weights (of any sign) on a grid of ``degrees`` in both angles: every
    linear ordering of three scores, up to the grid."""
    for theta in np.radians(np.arange(0.0, 180.0 + 1e-9, degrees)):
        for phi in np.radians(np.arange(0.0, 360.0, degrees)):
            yield np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])


def dominance_bound(tables, degrees: float = 2.0) -> tuple[float, np.ndarray]:
    """(the largest :func:`dominance_margin` any linear acceptance score of the three scores reaches
    on ``tables``, its direction): when it is < 0, no weighting, whatever its signs, orders every
    table's proposals at least as well as each input alone."""
    best, best_w = -np.inf, None
    for w in sphere_directions(degrees):
        margin = dominance_margin(tables, w)
        if margin > best:
            best, best_w = margin, w
    return float(best), best_w


def calibrate(tables, direction: np.ndarray, l2: float = CALIBRATION_L2) -> tuple[float, float]:
    """(bias, scale >= 0) of P(proposal is right) = sigmoid(bias + scale * x . direction), logistic
    regression on every table's proposals (each table weighs the same)."""
    z = np.concatenate([x @ direction for x, _, _ in tables])
    y = np.concatenate([c for _, c, _ in tables]).astype(np.float64)
    a = np.stack([np.ones_like(z), z], axis=1)
    loss = logistic(a, y, equal_per_set([len(c) for _, c, _ in tables]), l2)
    faces = [np.eye(2), np.eye(2)[:, :1]]
    bias, scale = minimise_on_faces(loss, faces, np.array([1]))
    return float(bias), float(scale)


def ranking_scale(heads, model_without_gaps: dict, direction: np.ndarray, minimum: float) -> float:
    """lambda >= ``minimum`` of ``a + g = lambda * direction``: the logistic loss of every re-ranked
    candidate's fused probability (``heads``: per set, each query's (scores, same place); each set
    weighs the same), by a log-spaced search."""
    weights = equal_per_set([sum(len(y) for _, y in t) for t in heads])
    y = np.concatenate([y for t in heads for _, y in t])
    best, best_loss = minimum, np.inf
    for lam in minimum * np.logspace(0, 2, 41):
        model = gap_model(model_without_gaps, direction, lam)
        p = np.concatenate([fused_scores(*x.T[:3], model, x[:, 3] if x.shape[1] > 3 else None)
                            for t in heads for x, _ in t if len(x)])
        p = np.clip(p, 1e-12, 1 - 1e-12)
        loss = -np.sum(weights * (y * np.log(p) + (1 - y) * np.log(1 - p)))
        if loss < best_loss:
            best, best_loss = float(lam), loss
    return best


def gap_model(model: Mapping[str, float], direction: np.ndarray, lam: float) -> dict:
    """``model`` with each gap weight set so that absolute + gap = ``lam`` * ``direction``."""
    out = dict(model)
    for k, name in enumerate(SEQUENCE_SCORES[:len(direction)]):
        out[gap_name(name)] = max(0.0, lam * direction[k] - model[name])
    return out


def _fitted(groups, tables, heads, dims: int, steps: int) -> dict:
    """The fused model over the first ``dims`` of :data:`SEQUENCE_SCORES` (3: a single frame, 4: with
    the sequence similarity), from the ranking ``groups`` (:func:`query_groups`), the acceptance
    ``tables`` (functions of the ranking weights giving (proposal scores, correct, queries with a
    match)) and the candidates' ``heads`` (:func:`ranking_scale`): the steps of the module doc."""
    names = SEQUENCE_SCORES[:dims]
    direction = _ranking_weights(groups, dims)
    tables = [table(direction) for table in tables]
    accept = acceptance_direction(tables, steps)
    bias, scale = calibrate(tables, accept)
    absolute = scale * accept
    model = {"bias": bias, **{name: float(absolute[k]) for k, name in enumerate(names)},
             **{gap_name(name): 0.0 for name in names}}
    positive = direction > 0
    minimum = float(np.max(absolute[positive] / direction[positive])) if positive.any() else 1.0
    if np.any(absolute[~positive] > 0):  # a score acceptance uses but the ranking does not: rank by it a little
        direction = np.where(positive, direction, 1e-6)
        minimum = float(np.max(absolute / direction))
    lam = ranking_scale(heads, model, direction, max(minimum, 1e-6))
    return gap_model(model, direction, lam)


def fit(per_set: Mapping[str, Sequence], extra_tables: Sequence = ()) -> dict:
    """The fused model of the module doc from ``{set name: records}``; ``extra_tables``: further
    (proposal scores, correct, queries with a match) tables acceptance must also order well (e.g.
    the single-frame proposals of a run, see ``benchmarks/loop_closure.py``)."""
    tables = [lambda d, records=records: proposal_table(records, d) for records in per_set.values()]
    tables += [lambda d, t=t: t for t in extra_tables]
    heads = [[head_evidence(r) for r in records] for records in per_set.values()]
    model = _fitted(query_groups(per_set), tables, heads, len(SCORES), GRID_STEPS)
    return {name: round(float(model[name]), 4) for name in ("bias", *FEATURES)}


# ----------------------------------------------------------------------------- sequence evidence
SEQUENCE_GRID_STEPS = 20  # the 4-score acceptance direction is searched in steps of 1/20


def run_evidence(frames, min_time_gap_s: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame of a run with sequence scoring (:class:`~vlad_localization.evaluation.FrameProposals`):
    (the :data:`SEQUENCE_SCORES` (n, 4) of its re-ranked candidates outside the time gap, whether each
    shows the frame's place (n,))."""
    from vlad_localization.images.frames import nanoseconds

    out = []
    for f in frames:
        head = [c for c in f.candidates if c.evidence and c.stamp_ns is not None
                and abs(f.stamp_ns - c.stamp_ns) >= nanoseconds(min_time_gap_s)]
        x = np.array([[c.global_similarity, c.evidence["spatial"], c.evidence["ransac"], c.sequence_similarity]
                      for c in head], np.float64).reshape(-1, 4)
        out.append((x, np.array([(c.store, c.map_id) in f.positives for c in head], bool)))
    return out


def _run_proposals(evidence, num_positive: int, ranking: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`proposal_table` of a run's frames (:func:`run_evidence`) ranked by ``ranking``."""
    best = [(x, y, int(descending_order(x @ ranking)[0])) for x, y in evidence if len(x)]
    return (np.array([x[i] for x, _, i in best], np.float64).reshape(-1, len(ranking)),
            np.array([y[i] for _, y, i in best], bool), num_positive)


def fit_sequence(model: Mapping[str, float], runs: Sequence, min_time_gap_s: float, kind: str = "sequence") -> dict:
    """``model`` with the group of fused-model keys of one kind of sequence similarity
    (``kind``: :data:`~vlad_localization.choices.SEQUENCE_KINDS`) fitted on ``runs``: lists of
    :class:`~vlad_localization.evaluation.FrameProposals` of runs scored with it, each run weighing
    the same. The model over the four scores (global similarity, spatial, RANSAC, sequence
    similarity) is fitted as the single-frame one (:func:`fit`): ranking each frame's true match
    first, acceptance no worse than each input alone on every run, calibration, gaps."""
    evidence = [run_evidence(frames, min_time_gap_s) for frames in runs]
    positives = [sum(bool(f.positives) for f in frames) for frames in runs]
    per_query = [[(x, y) for x, y in ev if y.any() and not y.all()] for ev in evidence]
    weights = equal_per_set([len(rows) for rows in per_query])
    groups = [(x, y, w) for (x, y), w in zip([row for rows in per_query for row in rows], weights)]
    tables = [lambda d, ev=ev, n=n: _run_proposals(ev, n, d) for ev, n in zip(evidence, positives)]
    fitted = _fitted(groups, tables, evidence, len(SEQUENCE_SCORES), SEQUENCE_GRID_STEPS)
    plain = ("bias", *FEATURES, *SEQUENCE_FEATURES)
    return {**model, **{key: round(float(fitted[name]), 4) for name, key in zip(plain, sequence_keys(kind))}}


def threshold_at_precision(per_set: Mapping[str, Sequence], model: Mapping[str, float], precision: float
                           ) -> tuple[float | None, float]:
    """(lowest fused threshold reaching ``precision`` on the pooled proposals, rounded down to 0.001;
    the recall it keeps), or (None, 0.0) when none does."""
    from vlad_localization.evaluation import precision_recall, top1_scores

    pooled = [r for records in per_set.values() for r in records]
    pr = precision_recall(*top1_scores(pooled, model))
    rows = [row for row in pr["curve"] if row[1] >= precision and row[2] > 0]
    if not rows:
        return None, 0.0
    threshold, _, recall = max(rows, key=lambda row: (row[2], -row[0]))
    return math.floor(threshold * 1000) / 1000, recall


__all__ = ["FEATURES", "SCORES", "acceptance_direction", "calibrate", "conditional_logit",
           "dominance_bound", "dominance_margin", "fit", "fit_sequence", "head_evidence", "run_evidence", "proposal_table", "query_groups", "rank_weights",
           "ranking_direction", "threshold_at_precision"]
