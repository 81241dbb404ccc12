"""PCA-whitening (WPCA) of VLAD vectors, as the official ``WPCA`` layer (NetVLAD, Arandjelovic et
al.; Patch-NetVLAD Sec. 4): a 1x1 conv ``WPCA.0`` (num_pcs x K*C) applied to the L2-normalised
VLAD vector, then L2 normalisation. Here the conv is held as a (K*C, num_pcs) matrix so it runs as
one matrix product (or per cluster block, see :mod:`.netvlad`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WPCA(nn.Module):
    """``y = normalize(W v + b)`` for L2-normalised VLAD vectors ``v`` (rows)."""

    def __init__(self, in_dim: int, num_pcs: int) -> None:
        super().__init__()
        # weight_t: the conv weight (num_pcs, in_dim, 1, 1) transposed to (in_dim, num_pcs)
        self.register_buffer("weight_t", torch.zeros(in_dim, num_pcs))
        self.register_buffer("bias", torch.zeros(num_pcs))

    @property
    def in_dim(self) -> int:
        return int(self.weight_t.shape[0])

    @property
    def num_pcs(self) -> int:
        return int(self.weight_t.shape[1])

    @classmethod
    def from_conv(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "WPCA":
        """From the official ``WPCA.0.weight`` (num_pcs, K*C, 1, 1) and ``WPCA.0.bias``."""
        num_pcs, in_dim = int(weight.shape[0]), int(weight.shape[1])
        layer = cls(in_dim, num_pcs)
        layer.weight_t.copy_(weight.reshape(num_pcs, in_dim).t())
        if bias is not None:
            layer.bias.copy_(bias.reshape(num_pcs))
        return layer

    def conv_state(self) -> dict[str, torch.Tensor]:
        """The official layout: ``{'WPCA.0.weight': (num_pcs, K*C, 1, 1), 'WPCA.0.bias': (num_pcs,)}``."""
        w = self.weight_t.t().contiguous().reshape(self.num_pcs, self.in_dim, 1, 1)
        return {"WPCA.0.weight": w, "WPCA.0.bias": self.bias.clone()}

    def finish(self, projected: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``normalize(projected * scale + b)``: the bias and final L2 norm, given ``W v`` (maybe
        still to be divided by the VLAD norm: ``scale`` broadcasts over the last dim)."""
        if scale is not None:
            projected = projected * scale.unsqueeze(-1)
        return F.normalize(projected + self.bias, p=2, dim=-1)

    def forward(self, vlad: torch.Tensor) -> torch.Tensor:
        """(..., K*C) L2-normalised VLAD -> (..., num_pcs) L2-normalised."""
        return self.finish(vlad @ self.weight_t)
