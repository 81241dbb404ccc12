"""Multi-scale fusion of per-patch-size scores (Hausler et al., CVPR 2021).

``absolute``: a weighted mean of the absolute per-size scores (weights normalised to sum 1), so a
single query/candidate pair gets a score in [0, 1] that can be thresholded.
``reference``: the official re-ranking - z-score each size's official scores over the candidates,
sum with the patch weights, ascending argsort. Its values only rank candidates of one query.
``fused``: a logistic model over the global similarity and both absolute patch scores (spatial and
RANSAC, from the same mutual matches), each also as its gap to the query's best-ranked candidate
(``choices.FUSED_FEATURES``), an estimate of the probability that the candidate shows the query's
place. The best-ranked candidate's gaps are 0, so the score loop closures are accepted on depends on
its absolute scores alone. While sequence scoring is on (``loop_closure.sequence_length``), the
candidate's sequence similarity and its gap are two more inputs (``choices.SEQUENCE_FEATURES``) of a
model of its own (:func:`sequence_model`): the frames before the query are evidence a single frame
lacks, and the frame's own evidence weighs differently beside it. The global similarity stays the
frame's own. Its weights are fitted non-negative: more evidence never lowers it. Its
coefficients are data (``matching.fusion_model`` in the presets), fitted on real image pairs by
:mod:`vlad_localization.fusion_fit` (``benchmarks/fit_fusion.py``). It keeps the global similarity, which the official
re-ranking throws away, so the ranking does not lose to global retrieval under big viewpoint changes.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from vlad_localization.choices import FUSED_FEATURES, SEQUENCE_FEATURES, sequence_keys

_SCORES = ("global_similarity", "spatial", "ransac")  # the fused model's scores; each has a ``*_gap`` twin
SEQUENCE = "sequence_similarity"  # and, while sequence scoring is on, this one (choices.SEQUENCE_FEATURES)


def normalised_weights(weights, num_sizes: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (num_sizes,):
        raise ValueError(f"need one patch weight per patch size ({num_sizes}), got {list(weights)}")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"patch weights {list(weights)} must be finite, >= 0 and not all zero")
    return w / w.sum()


def absolute_fusion(per_size: np.ndarray, weights) -> np.ndarray:
    """(K,) weighted mean of absolute per-size scores (K, S)."""
    return np.clip(per_size @ normalised_weights(weights, per_size.shape[1]), 0.0, 1.0)


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Candidates by descending score (absolute or fused); ties keep the incoming (global) order."""
    return np.argsort(-np.asarray(scores), kind="stable")


def reference_fusion(official: np.ndarray, weights) -> np.ndarray:
    """(K,) official z-score fusion of per-size official scores (K, S); smaller is better.

    Identical to the reference's ``normalise_func`` except that a size whose scores are all equal
    (one candidate, identical candidates) contributes 0 instead of NaN.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (official.shape[1],):
        raise ValueError(f"need one patch weight per patch size ({official.shape[1]}), got {list(weights)}")
    fused = np.zeros(official.shape[0])
    for i in range(official.shape[1]):
        column = np.ascontiguousarray(official[:, i])
        spread = np.std(column)
        if spread > 0:
            fused = fused + weights[i] * ((column - np.mean(column)) / spread)
    return fused


def reference_order(official: np.ndarray, weights) -> np.ndarray:
    """The official re-ranked order (ascending fused z-score, ``np.argsort`` as the reference)."""
    return np.argsort(reference_fusion(official, weights))


def gap_name(score: str) -> str:
    """The name of a score's gap feature (``global_similarity`` -> ``global_gap``)."""
    return score.replace("_similarity", "") + "_gap"


def _scores(sequence: bool) -> tuple[str, ...]:
    return _SCORES + (SEQUENCE,) if sequence else _SCORES


def rank_weights(model: Mapping[str, float], sequence: bool = False) -> np.ndarray:
    """(3,) the weights a query's candidates are ranked by under the fused ``model``: each score's
    absolute + gap weight (global similarity, spatial, RANSAC); (4,) with the sequence similarity
    (``sequence``: a model of :func:`sequence_model`)."""
    return np.array([model[name] + model[gap_name(name)] for name in _scores(sequence)], np.float64)


def sequence_model(model: Mapping[str, float], contrast: bool) -> dict:
    """The model that scores candidates while sequence scoring is on: ``model``'s group of the kind
    of sequence similarity in use (``contrast``: SeqSLAM's contrast-enhanced one;
    ``choices.SEQUENCE_KINDS``) under the plain names (``bias``, FUSED_FEATURES, SEQUENCE_FEATURES),
    or, without that group, the single-frame model with the sequence similarity weighed 0."""
    plain = ("bias", *FUSED_FEATURES, *SEQUENCE_FEATURES)
    kind = sequence_keys("contrast" if contrast else "sequence")
    if all(name in model for name in kind):
        return {name: float(model[key]) for name, key in zip(plain, kind)}
    return {**{name: float(model[name]) for name in ("bias", *FUSED_FEATURES)}, **dict.fromkeys(SEQUENCE_FEATURES, 0.0)}


def fused_features(global_similarity, spatial, ransac, ranking: np.ndarray, sequence_similarity=None) -> np.ndarray:
    """(K, F) inputs of the fused model for the K re-ranked candidates of one query, columns in
    :data:`~vlad_localization.choices.FUSED_FEATURES` order (then ``sequence_similarity`` and
    ``sequence_gap`` when given): each score, and its gap to the query's best-ranked candidate by
    ``ranking`` (:func:`rank_weights`), so that candidate's gaps are 0 and its probability depends on
    its absolute scores alone (what loop-closure acceptance compares)."""
    scores = [global_similarity, spatial, ransac] + ([] if sequence_similarity is None else [sequence_similarity])
    x = np.stack([np.asarray(v, np.float64).reshape(-1) for v in scores], axis=1)
    top = x[int(descending_order(x @ np.asarray(ranking, np.float64))[0])] if len(x) else np.zeros(x.shape[1])
    columns = {}
    for k, name in enumerate(_scores(sequence_similarity is not None)):
        columns[name] = x[:, k]
        columns[gap_name(name)] = x[:, k] - top[k]
    names = list(FUSED_FEATURES) + ([] if sequence_similarity is None else list(SEQUENCE_FEATURES))
    return np.stack([columns[name] for name in names], axis=1).reshape(-1, len(names))


def fused_scores(global_similarity, spatial, ransac, model: Mapping[str, float], sequence_similarity=None) -> np.ndarray:
    """(K,) the fused model's P(same place) of one query's K re-ranked candidates; with their
    ``sequence_similarity`` (sequence scoring on), ``model`` is a :func:`sequence_model`."""
    sequence = sequence_similarity is not None
    features = fused_features(global_similarity, spatial, ransac, rank_weights(model, sequence), sequence_similarity)
    return fused_probability(features, model)


def fused_probability(features: np.ndarray, model: Mapping[str, float]) -> np.ndarray:
    """(K,) P(same place) = sigmoid(bias + sum_f weight_f * feature_f), in [0, 1]; ``features``
    (:func:`fused_features`) with or without the two sequence columns."""
    features = np.asarray(features, np.float64)
    names = list(FUSED_FEATURES) + list(SEQUENCE_FEATURES)
    weights = np.array([model[name] for name in names[:features.shape[-1]]], np.float64)
    logit = float(model["bias"]) + features @ weights
    return 0.5 * (1.0 + np.tanh(0.5 * logit))  # the logistic function, without overflow
