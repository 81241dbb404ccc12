"""NetVLAD pooling with Patch-NetVLAD's multi-scale patch descriptors (Hausler et al., CVPR 2021).

For conv features ``x`` (N, C, H, W) the soft-assignment ``a_k(x)`` (1x1 conv + softmax over the K
clusters) weights the residuals ``x - c_k``. The global descriptor aggregates them over the whole
grid; a patch descriptor aggregates them over a square region of ``P x P`` cells (Sec. 3.2), read
from the integral feature of the residual maps. Each VLAD vector is intra-normalised (per cluster
block) and L2-normalised, then optionally projected by WPCA.

Unlike the reference this never builds the N x K x C x H x W residual tensor: clusters are
processed in chunks sized to a memory budget, and the WPCA projection is folded into the
aggregation: since intra-normalisation only scales each cluster block,
``W vec(R) = sum_k W_k r_k(R) / ||r_k(R)|| / n(R)``, accumulated per cluster chunk.

Two region paths: ``"regions"`` (default) sums each region's cells directly (separable window
sums, exact) and projects the region VLADs chunk by chunk; ``"cells"`` projects every cell once per
cluster and region-sums the projections through integral features like the reference (fewer
multiply-adds for many patch sizes, but slower on CPU and with the reference's integral round-off:
with hard soft-assignments, blocks of clusters with ~0 mass in a region are round-off noise in
the reference and in this path, exact in the default one).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .regions import integral_feature, region_grid, square_region_sums, square_region_sums_direct
from .wpca import WPCA

_EPS = 1e-12  # F.normalize's eps, as in the reference
# On a GPU the cluster chunks may fill this share of the free device memory, so that with room the
# WPCA projection is one product per patch size (few large launches); the CPU keeps ``chunk_bytes``
# (cache-sized chunks measured faster there).
GPU_FREE_SHARE = 0.5
PROJECTIONS = ("auto", "regions", "cells")


class PatchNetVLADPooling(nn.Module):
    """NetVLAD layer producing the global and the patch descriptors.

    Parameters and state-dict keys match the official ``PatchNetVLAD`` module (``conv.weight``,
    ``conv.bias`` for vladv2, ``centroids``), so ``pool.*`` entries of official checkpoints load.
    """

    def __init__(
        self,
        num_clusters: int = 64,
        dim: int = 512,
        normalize_input: bool = True,
        vladv2: bool = False,
        patch_sizes: Sequence[int] = (),
        strides: Sequence[int] | None = None,
        projection: str = "auto",
        chunk_bytes: int = 256 << 20,
    ) -> None:
        super().__init__()
        strides = list(strides) if strides is not None else [1] * len(patch_sizes)
        if len(strides) != len(patch_sizes):
            raise ValueError(f"patch_sizes {list(patch_sizes)} and strides {strides} differ in length")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection {projection!r}: use one of {PROJECTIONS}")
        self.num_clusters = int(num_clusters)
        self.dim = int(dim)
        self.normalize_input = bool(normalize_input)
        self.vladv2 = bool(vladv2)
        self.patch_sizes = [int(p) for p in patch_sizes]
        self.strides = [int(s) for s in strides]
        self.projection = projection
        self.chunk_bytes = int(chunk_bytes)
        self.alpha = 0.0
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=vladv2)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    # ------------------------------------------------------------------ initialisation
    def init_params(self, clsts: np.ndarray, traindescs: np.ndarray, vladv2_gap: str = "distances") -> None:
        """Initialise from k-means centroids and the (L2-normalised) descriptors they came from,
        as the reference's ``init_params``.

        vladv1: ``alpha = -ln(0.01) / mean(top1 - top2 dot-product gap)`` of the descriptors to the
        normalised centroids; assignment weights ``alpha * c_k / ||c_k||``, no bias.
        vladv2: ``alpha`` from the gap between each centroid's two nearest descriptors' squared
        distances; weights ``2 alpha c_k``, bias ``-alpha ||c_k||``. The reference reads the
        neighbour *indices* there (``index.search(...)[1]``); ``vladv2_gap="indices"`` reproduces
        that for bit-exact comparisons, the default uses the distances the method intends.
        """
        clsts = np.ascontiguousarray(clsts, dtype=np.float32)
        traindescs = np.ascontiguousarray(traindescs, dtype=np.float32)
        if clsts.shape != (self.num_clusters, self.dim) or traindescs.ndim != 2 or traindescs.shape[1] != self.dim:
            raise ValueError(
                f"init_params: expected centroids ({self.num_clusters}, {self.dim}) and descriptors "
                f"(n, {self.dim}), got {clsts.shape} and {traindescs.shape}"
            )
        centroids = torch.from_numpy(clsts)
        if not self.vladv2:
            clsts_assign = clsts / np.linalg.norm(clsts, axis=1, keepdims=True)
            dots = np.sort(clsts_assign @ traindescs.T, axis=0)[::-1, :]
            self.alpha = _alpha(np.mean(dots[0, :] - dots[1, :]))
            weight = torch.from_numpy(self.alpha * clsts_assign)[:, :, None, None]
            bias = None
        else:
            import faiss  # only needed here: keep encoder imports light

            index = faiss.IndexFlatL2(self.dim)
            index.add(traindescs)
            dists, ids = index.search(clsts, 2)
            ds_sq = (ids if vladv2_gap == "indices" else dists).astype(np.float64)
            self.alpha = _alpha(np.mean(ds_sq[:, 1] - ds_sq[:, 0]))
            weight = (2.0 * self.alpha * centroids)[:, :, None, None]
            bias = -self.alpha * centroids.norm(dim=1)
        with torch.no_grad():
            self.centroids.data = centroids.clone()
            self.conv.weight.data = weight.float().contiguous()
            if bias is None:
                self.conv.bias = None
            else:
                self.conv.bias = nn.Parameter(bias.float().contiguous())

    # ------------------------------------------------------------------ forward
    def soft_assignment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) features -> the (L2-normalised) features and the (N, K, H, W)
        soft-assignments ``a_k(x)`` (1x1 conv, softmax over clusters)."""
        if self.normalize_input:
            x = F.normalize(x, p=2, dim=1)
        return x, F.softmax(self.conv(x), dim=1)

    def forward(self, x: torch.Tensor, wpca: WPCA | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Global (N, D) and patch descriptors {P: (N, num_regions, D)}, L2-normalised; D is
        ``wpca.num_pcs`` with a WPCA layer, else K*C."""
        if x.shape[1] != self.dim:
            raise ValueError(f"NetVLAD expects {self.dim}-channel features, got {x.shape[1]}")
        x, assign = self.soft_assignment(x if x.dtype == torch.float64 else x.float())
        global_desc = self.global_descriptor(x, assign, wpca)
        if not self.patch_sizes:
            return global_desc, {}
        if self.choose_projection(tuple(x.shape[2:]), wpca) == "cells":
            patches = self.patch_descriptors_by_cells(x, assign, wpca)
        else:
            patches = self.patch_descriptors(x, assign, wpca)
        return global_desc, patches

    def global_descriptor(self, x: torch.Tensor, assign: torch.Tensor, wpca: WPCA | None) -> torch.Tensor:
        """NetVLAD over the whole grid: sum_x a_k(x) (x - c_k) = a^T x - (sum_x a_k) c_k."""
        n, c = x.shape[:2]
        a = assign.flatten(2)  # N, K, HW
        vlad = a @ x.flatten(2).transpose(1, 2) - a.sum(2).unsqueeze(-1) * self.centroids
        return self._finish(vlad.unsqueeze(1), wpca)[:, 0]

    def _finish(self, vlad: torch.Tensor, wpca: WPCA | None) -> torch.Tensor:
        """(N, R, K, C) aggregated residuals -> intra- and L2-normalised, WPCA-projected (N, R, D)."""
        n, r = vlad.shape[:2]
        vlad = F.normalize(F.normalize(vlad, p=2, dim=3).reshape(n, r, -1), p=2, dim=2)
        return vlad if wpca is None else wpca(vlad)

    def choose_projection(self, grid: tuple[int, int], wpca: WPCA | None) -> str:
        """``regions`` or ``cells`` (see the module docstring): the one with fewer multiply-adds."""
        if wpca is None:
            return "regions"
        # "cells" saves GEMM work for many regions but its D-dim integral features cost more than
        # that on CPU (performance preset, 640x480: 24 s vs 14 s) and it keeps the reference's
        # integral round-off, so "auto" uses the exact region path.
        return "regions" if self.projection == "auto" else self.projection

    def chunk_budget(self, device: torch.device) -> int:
        """Bytes the cluster chunks may take on ``device``: ``chunk_bytes``, or on a CUDA device
        ``GPU_FREE_SHARE`` of its free memory when that is more (torch.cuda.mem_get_info)."""
        if torch.device(device).type != "cuda":
            return self.chunk_bytes
        free, _ = torch.cuda.mem_get_info(device)
        return max(self.chunk_bytes, int(free * GPU_FREE_SHARE))

    def _cluster_chunk(self, per_cluster_floats: int, budget: int | None = None) -> int:
        """Clusters per chunk: as many as ``budget`` bytes (default ``chunk_bytes``) hold; all of
        them (one WPCA product per patch size) when they fit."""
        budget = self.chunk_bytes if budget is None else int(budget)
        return max(1, min(self.num_clusters, budget // (4 * max(1, per_cluster_floats))))

    def patch_descriptors(self, x: torch.Tensor, assign: torch.Tensor, wpca: WPCA | None) -> dict[int, torch.Tensor]:
        """Patch-NetVLAD descriptors of every square region (row-major), projecting region VLADs.

        A region's residual sum ``sum_{x in R} a_k(x) (x - c_k) = S_k(R) - A_k(R) c_k`` comes from
        the region's cells directly (separable window sums of the ``a_k(x) x`` maps, in cluster
        chunks), which is exact summation rather than a difference of integral-feature corners.
        """
        n, c, h, w = x.shape
        k_all = self.num_clusters
        cells = x.permute(0, 2, 3, 1)  # N, H, W, C (a view)
        assign_cl = assign.permute(0, 2, 3, 1)
        scales = list(zip(self.patch_sizes, self.strides))
        grids = {p: region_grid(h, w, p, s) for p, s in scales}
        rows = {p: n * math.prod(grids[p]) for p, _ in scales}
        out_dim = wpca.num_pcs if wpca is not None else k_all * c
        mass = {p: square_region_sums_direct(assign_cl, p, s, 1, 2).reshape(rows[p], k_all) for p, s in scales}
        desc = {p: x.new_zeros(rows[p], out_dim) for p, _ in scales}
        block_sq = {p: x.new_zeros(rows[p]) for p, _ in scales}  # ||intra-normalised VLAD||^2
        chunk = self._cluster_chunk(5 * n * h * w * c + 2 * sum(rows.values()) * c, self.chunk_budget(x.device))
        for k0 in range(0, k_all, chunk):
            k1 = min(k_all, k0 + chunk)
            kc = k1 - k0
            # a_k(x) x for the chunk's clusters: N, H, W, kc * C
            weighted = (assign_cl[..., k0:k1, None] * cells[..., None, :]).reshape(n, h, w, kc * c)
            for p, s in scales:
                vlad = square_region_sums_direct(weighted, p, s, 1, 2).reshape(rows[p], kc, c)  # S_k(R)
                vlad -= mass[p][:, k0:k1, None] * self.centroids[k0:k1]  # - A_k(R) c_k
                norms = vlad.norm(dim=2, keepdim=True)
                inv = 1.0 / norms.clamp_min(_EPS)
                block_sq[p] += (norms * inv).square().sum((1, 2))
                vlad *= inv  # intra-normalisation
                if wpca is None:
                    desc[p][:, k0 * c : k1 * c] = vlad.reshape(rows[p], -1)
                else:
                    desc[p].addmm_(vlad.reshape(rows[p], -1), wpca.weight_t[k0 * c : k1 * c])
            del weighted
        out = {}
        for p, _ in scales:
            scale = block_sq[p].clamp_min(_EPS * _EPS).rsqrt()  # 1 / ||concatenated blocks||
            d = wpca.finish(desc[p], scale) if wpca is not None else desc[p] * scale.unsqueeze(-1)
            out[p] = d.reshape(n, rows[p] // n, out_dim)
        return out

    def patch_descriptors_by_cells(
        self, x: torch.Tensor, assign: torch.Tensor, wpca: WPCA
    ) -> dict[int, torch.Tensor]:
        """Patch-NetVLAD descriptors (row-major) with the WPCA projection done once per cell and
        cluster, then region-summed through integral features (the reference's region arithmetic)."""
        cells = x.permute(0, 2, 3, 1).contiguous()
        assign = assign.permute(0, 2, 3, 1).contiguous()
        n, h, w, c = cells.shape
        k_all = self.num_clusters
        scales = list(zip(self.patch_sizes, self.strides))
        counts = {p: n * math.prod(region_grid(h, w, p, s)) for p, s in scales}
        out_dim = wpca.num_pcs
        out = {p: cells.new_zeros(counts[p], out_dim) for p, _ in scales}
        block_sq = {p: cells.new_zeros(counts[p]) for p, _ in scales}  # ||intra-normalised VLAD||^2

        cells_per_map = n * (h + 1) * (w + 1)
        per_cluster = 3 * cells_per_map * (c + out_dim) + 2 * sum(counts.values()) * c
        weight_kcd = wpca.weight_t.view(k_all, c, out_dim)
        centre_proj = torch.bmm(self.centroids.unsqueeze(1), weight_kcd).squeeze(1)  # W_k c_k
        chunk = self._cluster_chunk(per_cluster, self.chunk_budget(cells.device))

        for k0 in range(0, k_all, chunk):
            k1 = min(k_all, k0 + chunk)
            kc = k1 - k0
            a = assign[..., k0:k1]
            # residual maps a_k(x) (x - c_k): (N, H, W, kc, C) -> integral feature over the grid
            resid = (cells.unsqueeze(3) - self.centroids[k0:k1]) * a.unsqueeze(-1)
            integral = integral_feature(resid.reshape(n, h, w, kc * c), 1, 2)
            del resid
            inv_norms = []
            for p, s in scales:
                norms = square_region_sums(integral, p, s, 1, 2).reshape(counts[p], kc, c).norm(dim=2)
                inv = 1.0 / norms.clamp_min(_EPS)
                block_sq[p] += (norms * inv).square().sum(1)
                inv_norms.append(inv)
            del integral
            self._project_cells(cells, a, weight_kcd[k0:k1], centre_proj[k0:k1], inv_norms, out)

        result = {}
        for p, s in scales:
            scale = block_sq[p].clamp_min(_EPS * _EPS).rsqrt()
            result[p] = wpca.finish(out[p], scale).reshape(n, counts[p] // n, out_dim)
        return result

    def _project_cells(self, cells, a, weight_kcd, centre_proj, inv_norms, out) -> None:
        """Add sum_k W_k r_k(R) / ||r_k(R)|| for a cluster chunk, projecting each cell once:
        q_k(x) = a_k(x) (W_k x - W_k c_k), region-summed through its integral feature."""
        n, h, w, c = cells.shape
        kc, _, d = weight_kcd.shape
        proj = torch.matmul(cells.reshape(1, n * h * w, c), weight_kcd)  # (kc, NHW, D)
        proj -= centre_proj.unsqueeze(1)
        proj *= a.reshape(n * h * w, kc).t().unsqueeze(-1)
        integral = integral_feature(proj.view(kc, n, h, w, d), 2, 3)
        del proj
        for (p, s), inv in zip(zip(self.patch_sizes, self.strides), inv_norms):
            sums = square_region_sums(integral, p, s, 2, 3).reshape(kc, -1, d)
            sums *= inv.t().unsqueeze(-1)
            out[p] += sums.sum(0)


def _alpha(mean_gap: float) -> float:
    """The soft-assignment sharpness -log(0.01) / mean gap between the two nearest (Arandjelovic
    et al.'s initialisation); refused when the gap is 0 (identical training descriptors)."""
    if not (np.isfinite(mean_gap) and mean_gap > 0):
        raise ValueError(f"NetVLAD init: the training descriptors give a mean nearest-neighbour gap of {mean_gap}: "
                         "they are too few or identical (duplicate images?); use more, varied images")
    return float(-np.log(0.01) / mean_gap)

