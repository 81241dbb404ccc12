"""Patch-NetVLAD re-ranking of global top-k candidates by multi-scale patch matching.

``PatchMatcher.score`` matches the query's patch descriptors against all K candidates at once
(mutual nearest neighbours, batched on the descriptors' device), scores each patch size with RANSAC
or rapid spatial scoring, and fuses the sizes (see :mod:`.fusion`). Scores are reported twice:
``raw`` in the official convention (negative, smaller is better) and ``per_size`` / ``fused`` as
absolute scores in [0, 1]:

* RANSAC: fraction of the query's patches that are homography inliers (1.0 for identical images).
* spatial: the spatial score divided by its maximum (all query patches matched with zero residual).

With ``fusion: fused`` both matchers score the same mutual matches (``evidence``; the spatial
presets add RANSAC's cost) and ``probability`` is the fused model's P(same place), which orders
the candidates.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from vlad_localization.choices import FUSIONS, MATCHERS, names
from vlad_localization.config import Config, MatchingConfig
from vlad_localization.matching.fusion import (
    absolute_fusion,
    descending_order,
    fused_scores,
    normalised_weights,
    reference_order,
    sequence_model,
)
from vlad_localization.matching.keypoints import patch_keypoints
from vlad_localization.matching.mutual import mutual_nearest_neighbours
from vlad_localization.matching.batched_ransac import batched_homographies
from vlad_localization.matching.ransac import HomographyFit, fit_homography, reprojection_threshold
from vlad_localization.matching.spatial import spatial_anchor, spatial_scores
from vlad_localization.model.descriptors import Descriptors
from vlad_localization.model.geometry import BackboneGeometry


@dataclass
class Correspondences:
    """Matched patch keypoints of one candidate and one patch size, in network-input pixels.

    RANSAC: the inliers and the homography (candidate -> query pixels). Spatial: all mutual
    matches, ``homography`` None.
    """

    query_keypoints: np.ndarray  # (M, 2) float x, y
    candidate_keypoints: np.ndarray  # (M, 2) float x, y
    homography: np.ndarray | None


@dataclass
class MatchResult:
    """Scores of K candidates (in the order given) for S patch sizes.

    ``per_size`` (K, S) and ``fused`` (K,): absolute scores in [0, 1]. ``raw`` (K, S): official
    per-size scores (<= 0, smaller is better). ``inliers`` (K, S): RANSAC inliers, or mutual matches
    for the spatial matcher. ``order`` (K,): candidate indices best first under the configured fusion
    (absolute: descending ``fused``; reference: the official z-score argsort; fused: descending
    ``probability``). ``correspondences[k][s]``: what to draw for candidate k and patch size s.
    ``evidence`` (fused only): {matcher: (K,) absolute score of that matcher, sizes fused};
    ``probability`` (fused only): (K,) the fused model's P(same place) in [0, 1].
    """

    patch_sizes: tuple[int, ...]
    matcher: str
    per_size: np.ndarray
    fused: np.ndarray
    raw: np.ndarray
    inliers: np.ndarray
    order: np.ndarray
    correspondences: list[list[Correspondences]]
    evidence: dict[str, np.ndarray] | None = None
    probability: np.ndarray | None = None
    global_similarity: np.ndarray | None = None  # (K,) as given to score() (the fused model's input)

    def __len__(self) -> int:
        return int(self.fused.shape[0])

    def record(self, k: int) -> dict:
        """Candidate ``k``'s scores as JSON (what ``vlad-localization match`` prints): global
        similarity, absolute patch score, per-size scores and inliers, matcher, fused score."""
        sizes = [str(p) for p in self.patch_sizes]
        return {
            "global_similarity": None if self.global_similarity is None else float(self.global_similarity[k]),
            "patch_score": float(self.fused[k]),
            "per_size": dict(zip(sizes, map(float, self.per_size[k]))),
            "inliers": dict(zip(sizes, map(int, self.inliers[k]))),
            "matcher": self.matcher,
            "fused_score": None if self.probability is None else float(self.probability[k]),
        }

    def matched_keypoints(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ``k``'s correspondences of all patch sizes stacked: (query (M, 2), candidate (M, 2))."""
        pairs = self.correspondences[k]
        return (
            np.concatenate([c.query_keypoints for c in pairs]).reshape(-1, 2),
            np.concatenate([c.candidate_keypoints for c in pairs]).reshape(-1, 2),
        )


MAX_AUTO_WORKERS = 8


@lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool per size (created on first use, shared by every matcher)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlad_match")


def scoring_workers(configured: int) -> int:
    """Threads that score candidates: ``configured``, or for 0 one per CPU core (at most 8)."""
    if configured:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cores))


def map_tasks(fn, tasks: list, workers: int) -> list:
    """``[fn(*t) for t in tasks]``, on ``workers`` threads when there are several tasks."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*t) for t in tasks]
    return list(_pool(workers).map(lambda t: fn(*t), tasks))


class PatchMatcher:
    """Scores query/candidate patch descriptors of one network input size (one conv grid)."""

    def __init__(
        self,
        matching_cfg: MatchingConfig,
        patch_sizes,
        strides,
        geometry: BackboneGeometry,
        grid_hw: tuple[int, int],
        image_hw: tuple[int, int] | None = None,
    ):
        if matching_cfg.matcher not in MATCHERS:
            raise ValueError(f"matching.matcher {matching_cfg.matcher!r}: use {names(MATCHERS)}")
        if matching_cfg.fusion not in FUSIONS:
            raise ValueError(f"matching.fusion {matching_cfg.fusion!r}: use {names(FUSIONS)}")
        if matching_cfg.fusion == "fused" and not matching_cfg.fusion_model:
            raise ValueError("matching.fusion fused needs matching.fusion_model")
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        self.strides = tuple(int(s) for s in strides)
        if len(self.patch_sizes) != len(self.strides) or not self.patch_sizes:
            raise ValueError(f"patch sizes {self.patch_sizes} and strides {self.strides} must pair up")
        normalised_weights(matching_cfg.patch_weights, len(self.patch_sizes))  # validates
        self.cfg = matching_cfg
        # threads pay off only for OpenCV's RANSAC (it releases the GIL); spatial scores are cheap numpy
        self.uses_ransac = matching_cfg.matcher == "ransac" or matching_cfg.fusion == "fused"
        self.workers = scoring_workers(matching_cfg.workers) if self.uses_ransac else 1
        self.geometry = geometry
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        self.image_hw = tuple(image_hw) if image_hw else (
            self.grid_hw[0] * geometry.stride, self.grid_hw[1] * geometry.stride
        )
        self.keypoints, self.indices, self.thresholds, self.anchors = {}, {}, {}, {}
        for size, stride in zip(self.patch_sizes, self.strides):
            self.keypoints[size], self.indices[size] = patch_keypoints(geometry, self.grid_hw, size, stride)
            self.thresholds[size] = reprojection_threshold(geometry.stride, stride, matching_cfg.ransac_threshold_factor)
            self.anchors[size] = spatial_anchor(self.indices[size])

    @classmethod
    def from_config(cls, cfg: Config, geometry: BackboneGeometry, grid_hw: tuple[int, int]) -> "PatchMatcher":
        image_hw = (cfg.model.image_height, cfg.model.image_width) if cfg.model.image_height else None
        return cls(cfg.matching, cfg.model.patch_sizes, cfg.model.strides, geometry, grid_hw, image_hw)

    def num_patches(self, size: int) -> int:
        return int(self.keypoints[size].shape[1])

    def _checked(self, name: str, desc: dict, batched: bool) -> dict[int, torch.Tensor]:
        missing = [p for p in self.patch_sizes if p not in desc]
        if missing:
            raise ValueError(f"{name} descriptors lack patch size(s) {missing}; have {sorted(desc)}")
        out = {}
        for size in self.patch_sizes:
            t = torch.as_tensor(desc[size])
            if not batched and t.dim() == 3 and t.shape[0] == 1:
                t = t[0]
            if t.dim() != (3 if batched else 2) or t.shape[-2] != self.num_patches(size):
                expect = ("(K, " if batched else "(") + f"{self.num_patches(size)}, D)"
                raise ValueError(
                    f"{name} patch descriptors of size {size} have shape {tuple(t.shape)}, expected "
                    f"{expect} for the {self.grid_hw[0]}x{self.grid_hw[1]} conv grid: encode query and "
                    "map with the same model and input size"
                )
            out[size] = t
        return out

    def score(self, query: dict, candidates: dict, global_similarity=None, sequence_similarity=None,
              contrast: bool = False) -> MatchResult:
        """Score K candidates: ``query`` {P: (Pq, D)}, ``candidates`` {P: (K, Pc, D)};
        ``global_similarity`` (K,): the candidates' global similarities (needed by ``fused``);
        ``sequence_similarity`` (K,): their sequence similarities while sequence scoring is on
        (``contrast``: contrast-enhanced, :func:`~vlad_localization.matching.fusion.sequence_model`)."""
        query = self._checked("query", query, batched=False)
        candidates = self._checked("candidate", candidates, batched=True)
        num_cand = {int(t.shape[0]) for t in candidates.values()}
        if len(num_cand) != 1:
            raise ValueError(f"candidate descriptors disagree on the number of candidates: {num_cand}")
        num_cand = num_cand.pop()
        sizes = len(self.patch_sizes)
        raw = np.zeros((num_cand, sizes))
        per_size = np.zeros((num_cand, sizes))
        inliers = np.zeros((num_cand, sizes), dtype=np.int64)
        corr: list[list[Correspondences]] = [[None] * sizes for _ in range(num_cand)]
        fused_model = self.cfg.fusion == "fused"
        other = next(m for m in MATCHERS if m != self.cfg.matcher)
        other_size = np.zeros((num_cand, sizes))  # the other matcher's absolute scores (fused only)
        pairs = []  # (candidate, size index, size, query patch indices, candidate patch indices, num_query)
        for s, size in enumerate(self.patch_sizes):
            matches = mutual_nearest_neighbours(query[size], candidates[size])
            num_query = int(query[size].shape[0])
            pairs += [(k, s, size, *matches.pairs(k), num_query) for k in range(num_cand)]
        fits = self._ransac_fits(pairs, query[self.patch_sizes[0]].device) if self.uses_ransac else [None] * len(pairs)
        for (k, s, size, query_idx, cand_idx, num_query), fit in zip(pairs, fits):
            for matcher in (self.cfg.matcher, other) if fused_model else (self.cfg.matcher,):
                scored = self._score_matches(size, query_idx, cand_idx, num_query, matcher, fit)
                if matcher == self.cfg.matcher:
                    raw[k, s], per_size[k, s], inliers[k, s], corr[k][s] = scored
                else:
                    other_size[k, s] = scored[1]
        fused = absolute_fusion(per_size, self.cfg.patch_weights)
        evidence = probability = None
        if fused_model:
            if global_similarity is None or np.shape(global_similarity) != (num_cand,):
                raise ValueError(f"fusion fused needs the {num_cand} candidates' global similarities")
            evidence = {self.cfg.matcher: fused, other: absolute_fusion(other_size, self.cfg.patch_weights)}
            model = self.cfg.fusion_model if sequence_similarity is None else sequence_model(self.cfg.fusion_model, contrast)
            probability = fused_scores(global_similarity, evidence["spatial"], evidence["ransac"], model,
                                       sequence_similarity)
            order = descending_order(probability)
        elif self.cfg.fusion == "reference":
            order = reference_order(raw, self.cfg.patch_weights)
        else:
            order = descending_order(fused)
        given = None if global_similarity is None else np.asarray(global_similarity, np.float64).reshape(-1)
        return MatchResult(self.patch_sizes, self.cfg.matcher, per_size, fused, raw, inliers, order, corr,
                           evidence, probability, given)

    def ransac_backend(self, device: torch.device) -> str:
        """``batched`` or ``opencv``: where this matcher's RANSAC runs for descriptors on ``device``
        (the reference fusion always uses OpenCV, so that it stays the official re-ranking)."""
        if self.cfg.fusion == "reference" or self.cfg.ransac_backend == "opencv":
            return "opencv"
        if self.cfg.ransac_backend == "batched" or torch.device(device).type != "cpu":
            return "batched"
        return "opencv"  # auto on the CPU: OpenCV on threads measured faster (benchmarks/rerank.py)

    def _ransac_fits(self, pairs: list, device: torch.device) -> list[HomographyFit]:
        """One RANSAC homography per (candidate, size) of ``pairs``: all at once on ``device``
        (batched) or one OpenCV call each on ``workers`` threads."""
        keypoints = [
            (self.keypoints[size][:, query_idx].T.astype(np.float64), self.keypoints[size][:, cand_idx].T.astype(np.float64),
             self.thresholds[size])
            for _, _, size, query_idx, cand_idx, _ in pairs
        ]
        if self.ransac_backend(device) == "batched":
            query_kp, cand_kp, thresholds = zip(*keypoints) if keypoints else ((), (), ())
            return batched_homographies(list(query_kp), list(cand_kp), list(thresholds), self.cfg.ransac_seed, device)
        return map_tasks(lambda q, c, t: fit_homography(q, c, t, self.cfg.ransac_seed), keypoints, self.workers)

    def _score_matches(self, size: int, query_idx, cand_idx, num_query: int, matcher: str, fit: HomographyFit | None):
        """(official score, absolute score, inliers, Correspondences) of one candidate's mutual matches
        (``fit``: their RANSAC homography, for the ransac matcher)."""
        if matcher == "ransac":
            corr = Correspondences(fit.query_keypoints, fit.candidate_keypoints, fit.homography)
            return -fit.inliers / num_query, fit.inliers / num_query, fit.inliers, corr
        query_kp = self.keypoints[size][:, query_idx].T.astype(np.float64)
        cand_kp = self.keypoints[size][:, cand_idx].T.astype(np.float64)
        official, absolute = spatial_scores(
            self.indices[size][:, query_idx], self.indices[size][:, cand_idx], self.anchors[size], num_query
        )
        return official, absolute, len(cand_idx), Correspondences(query_kp, cand_kp, None)

    def pair(self, query_desc: Descriptors, ref_desc: Descriptors) -> MatchResult:
        """Score one reference image against one query image (first image of each batch; the
        global similarity, for ``fused``, is the inner product of their global descriptors)."""
        for name, desc in (("query", query_desc), ("reference", ref_desc)):
            if tuple(desc.grid) != self.grid_hw:
                raise ValueError(
                    f"{name} descriptors come from a {desc.grid[0]}x{desc.grid[1]} conv grid but this "
                    f"matcher was built for {self.grid_hw[0]}x{self.grid_hw[1]}"
                )
        query = {p: query_desc.patches[p][0] for p in self.patch_sizes if p in query_desc.patches}
        cands = {p: ref_desc.patches[p][:1] for p in self.patch_sizes if p in ref_desc.patches}
        similarity = (query_desc.global_desc[0].float() @ ref_desc.global_desc[0].float()).reshape(1)
        return self.score(query, cands, similarity.detach().cpu().numpy())
