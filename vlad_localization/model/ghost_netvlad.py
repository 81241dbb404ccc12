"""NetVLAD with ghost clusters (GhostVLAD, Zhong et al., ACCV 2018), as a reusable layer for sets
of features (B x N x D), e.g. video frames or text tokens - the collaborative-experts / towhee
``NetVLAD(cluster_size, feature_size, ghost_clusters, add_batch_norm)`` design.

Features are soft-assigned to ``cluster_size + ghost_clusters`` clusters; the ghost clusters absorb
uninformative features and are dropped from the aggregation. Output: intra-normalised and
L2-normalised VLAD, B x (D * cluster_size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GhostNetVLAD(nn.Module):
    """Trainable NetVLAD aggregator over a feature set with optional ghost clusters and mask."""

    def __init__(self, cluster_size: int, feature_size: int, ghost_clusters: int = 0, add_batch_norm: bool = True) -> None:
        super().__init__()
        if cluster_size < 1 or feature_size < 1 or ghost_clusters < 0:
            raise ValueError("cluster_size and feature_size must be >= 1, ghost_clusters >= 0")
        self.cluster_size = cluster_size
        self.feature_size = feature_size
        self.ghost_clusters = ghost_clusters
        total = cluster_size + ghost_clusters
        init_sc = 1 / math.sqrt(feature_size)
        self.clusters = nn.Parameter(init_sc * torch.randn(feature_size, total))  # assignment weights
        self.clusters2 = nn.Parameter(init_sc * torch.randn(1, feature_size, cluster_size))  # centres
        self.batch_norm = nn.BatchNorm1d(total) if add_batch_norm else None
        self.out_dim = cluster_size * feature_size

    def soft_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x D -> B x N x (K + G) softmax assignments."""
        b, n, _ = x.shape
        logits = x.reshape(b * n, self.feature_size) @ self.clusters
        if self.batch_norm is not None:
            logits = self.batch_norm(logits)
        return F.softmax(logits, dim=1).view(b, n, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: B x N x D features; ``mask``: B x N (True/1 = valid) or None. Returns B x (D*K)."""
        if x.dim() != 3 or x.shape[2] != self.feature_size:
            raise ValueError(f"expected B x N x {self.feature_size} features, got {tuple(x.shape)}")
        assign = self.soft_assignment(x)[:, :, : self.cluster_size]  # ghosts dropped
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask {tuple(mask.shape)} must be B x N = {tuple(x.shape[:2])}")
            assign = assign * mask.to(assign.dtype).unsqueeze(-1)
        a_sum = assign.sum(dim=1, keepdim=True)  # B x 1 x K
        vlad = torch.matmul(assign.transpose(1, 2), x).transpose(1, 2)  # B x D x K
        vlad = vlad - a_sum * self.clusters2
        vlad = F.normalize(vlad, p=2, dim=1)  # intra-normalisation
        return F.normalize(vlad.reshape(x.shape[0], -1), p=2, dim=1)
