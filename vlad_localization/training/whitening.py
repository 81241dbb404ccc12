"""Learned whitening of the global VLAD from pairs of one place (Radenovic, Tolias and Chum, "Fine-tuning
CNN image retrieval with no human annotation", TPAMI 2018, Sec. 3.3), written as the official WPCA.

``init-model``'s PCA-whitening whitens what varies across all images. Learned whitening first
whitens what varies between two images of one place (season, light, a few metres of viewpoint: the
covariance ``C_S`` of the pairs' differences), then keeps the ``num_pcs`` directions along which the
images vary most in that space (the PCA of the whitened data): ``W = E^T C_S^(-1/2) P``, ``b = -W mu``.
It is one linear map, so it fits the official ``WPCA.0`` conv (weight and bias): every command and
the node load the result unchanged.

A few thousand pairs cannot estimate ``C_S`` in 8192 dims, so the centred VLADs are first projected
on their ``pca_dims`` top principal components (``P``) and ``C_S`` is shrunk toward a scaled
identity (``shrinkage``), with no more dims than pairs. Both are chosen on the validation places
from a small grid (:func:`choose_whitening`), by the one-standard-error rule.

Pairs: each frame with its positive nearest in space (:func:`nearest_pairs`), so the differences are
those of one place, not of the neighbouring places that ``--positive-m`` also admits.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import TrainingFrames
from .mining import PlaceCriteria, PlacePairs, recall_at_k

PCA_DIMS = (256, 512, 1024, 2048)  # the grid searched on the validation places
SHRINKAGE = (0.0, 0.1, 0.2, 0.3)
DEFAULT = (512, 0.2)  # without validation places: the grid's middle


@dataclass
class Whitening:
    """One learned whitening: ``y = normalize(weight @ v + bias)`` for a global VLAD ``v``."""

    weight: np.ndarray  # (num_pcs, K*C)
    bias: np.ndarray  # (num_pcs,)
    pca_dims: int
    shrinkage: float
    num_pairs: int
    validation: dict | None = None  # recall@1/5 on the validation places
    grid: list = field(default_factory=list)  # every (pca_dims, shrinkage) tried, with its recall

    def conv_state(self) -> dict[str, torch.Tensor]:
        """The official ``WPCA.0.weight`` (num_pcs, K*C, 1, 1) and ``WPCA.0.bias``."""
        w = torch.from_numpy(np.ascontiguousarray(self.weight, dtype=np.float32))
        return {"WPCA.0.weight": w.reshape(*w.shape, 1, 1), "WPCA.0.bias": torch.from_numpy(self.bias.astype(np.float32))}

    def apply(self, vlads: np.ndarray) -> np.ndarray:
        y = vlads @ self.weight.T.astype(np.float32) + self.bias.astype(np.float32)
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)

    def summary(self) -> dict:
        return {"method": "learned", "pca_dims": self.pca_dims, "shrinkage": self.shrinkage,
                "num_pairs": self.num_pairs, "validation_recall": self.validation, "grid": self.grid}


def nearest_pairs(data: TrainingFrames, pairs: PlacePairs) -> np.ndarray:
    """(M, 2) frame index pairs, ``i < j``: every frame with its positive nearest in space (once each)."""
    out = set()
    for i, pos in enumerate(pairs.positives):
        if len(pos):
            j = int(pos[np.argmin(np.linalg.norm(data.position[pos] - data.position[i], axis=1))])
            out.add((min(i, j), max(i, j)))
    return np.array(sorted(out), np.int64).reshape(-1, 2)


class WhiteningFitter:
    """The principal subspace of the training VLADs (computed once), from which :meth:`fit` learns a
    whitening for any ``pca_dims`` and ``shrinkage``."""

    def __init__(self, vlads: np.ndarray, pairs: np.ndarray, max_samples: int = 5_000, seed: int = 0) -> None:
        if not len(pairs):
            raise ValueError("learned whitening needs pairs of one place (frames with a positive)")
        x = torch.from_numpy(np.asarray(vlads, np.float64))
        self.mean = x.mean(0)
        x -= self.mean
        rows = x
        if len(x) > max_samples:  # the subspace from a sample; every row is projected below
            rows = x[np.sort(np.random.default_rng(seed).choice(len(x), max_samples, replace=False))]
        self.basis = torch.linalg.svd(rows, full_matrices=False).Vh  # (rank, K*C), by variance
        self.z = x @ self.basis.T  # every row on every component, once: a fit takes the first pca_dims
        self.pairs = pairs

    @property
    def max_dims(self) -> int:
        return int(self.basis.shape[0])

    def fit(self, num_pcs: int, pca_dims: int, shrinkage: float) -> Whitening:
        if not num_pcs <= pca_dims <= self.max_dims:
            raise ValueError(f"need num_pcs {num_pcs} <= pca_dims {pca_dims} <= {self.max_dims} (the samples' rank)")
        p, z = self.basis[:pca_dims], self.z[:, :pca_dims]
        diff = z[self.pairs[:, 0]] - z[self.pairs[:, 1]]
        cs = diff.T @ diff / len(diff)
        cs = (1 - shrinkage) * cs + shrinkage * torch.trace(cs) / pca_dims * torch.eye(pca_dims, dtype=cs.dtype)
        lam, vec = torch.linalg.eigh(cs)
        w1 = vec @ torch.diag(lam.clamp_min(1e-12 * float(lam.max())).rsqrt()) @ vec.T
        z1 = z @ w1.T
        _, vec2 = torch.linalg.eigh(z1.T @ z1 / len(z1))
        weight = vec2.flip(1)[:, :num_pcs].T @ w1 @ p
        bias = -(weight @ self.mean)
        return Whitening(weight.float().numpy(), bias.float().numpy(), pca_dims, shrinkage, len(self.pairs))


def choose_whitening(train_vlads: np.ndarray, train_data: TrainingFrames, train_pairs: PlacePairs, num_pcs: int,
                     val_vlads: np.ndarray | None = None, val_data: TrainingFrames | None = None,
                     val_pairs: PlacePairs | None = None, criteria: PlaceCriteria | None = None,
                     max_samples: int = 5_000, seed: int = 0) -> Whitening:
    """The learned whitening chosen on the validation places (:func:`simplest_within_one_se`) over the
    grid of ``pca_dims`` (from ``num_pcs`` up to the samples' rank and the number of pairs) and
    ``shrinkage``; without validation queries, the :data:`DEFAULT` (capped)."""
    fitter = WhiteningFitter(train_vlads, nearest_pairs(train_data, train_pairs), max_samples, seed)
    if num_pcs > fitter.max_dims:
        warnings.warn(f"num_pcs {num_pcs} capped to {fitter.max_dims}: only {len(train_vlads)} training frames "
                      f"(use more frames for {num_pcs} PCs, or --whitening pca, which also samples patches)",
                      stacklevel=2)
        num_pcs = fitter.max_dims
    # no more dims than pairs: C_S is then estimated, not only made up by the shrinkage
    cap = min(fitter.max_dims, len(fitter.pairs))
    dims = [d for d in PCA_DIMS if num_pcs <= d <= cap] or [max(num_pcs, min(cap, DEFAULT[0]))]
    if val_pairs is None or not len(val_pairs.queries):
        return fitter.fit(num_pcs, max([d for d in dims if d <= DEFAULT[0]], default=dims[0]), DEFAULT[1])
    fits = []
    for d in dims:
        for s in SHRINKAGE if d <= len(fitter.pairs) else SHRINKAGE[1:]:  # fewer pairs than num_pcs
            w = fitter.fit(num_pcs, d, s)
            w.validation = recall_at_k(w.apply(val_vlads), val_data, val_pairs, criteria, (1, 5))
            fits.append(w)
    chosen = simplest_within_one_se(fits, len(val_pairs.queries))
    chosen.grid = [{"pca_dims": w.pca_dims, "shrinkage": w.shrinkage, "recall": w.validation} for w in fits]
    return chosen


def simplest_within_one_se(fits: list[Whitening], n_queries: int) -> Whitening:
    """The one-standard-error rule (Breiman et al. 1984): among the fits whose validation recall@1 is
    within one standard error (binomial, ``n_queries``) of the best, the simplest: fewest PCA dims,
    then most shrinkage. The best fit alone adapts most to the training places' own changes; on
    Nordland it lost Gardens Point places the simpler fit keeps (docs/cli.md#train)."""
    best = max(w.validation["1"] for w in fits)
    se = math.sqrt(best * (1 - best) / max(n_queries, 1))
    close = [w for w in fits if w.validation["1"] >= best - se - 1e-12]
    return min(close, key=lambda w: (w.pca_dims, -w.shrinkage, -w.validation["5"]))
