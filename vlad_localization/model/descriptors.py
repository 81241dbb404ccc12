"""The encoder's output for a batch of images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Descriptors:
    """Global and multi-scale patch descriptors of N images (all of one network input size).

    ``global_desc``: (N, D) L2-normalised. ``patches``: patch size -> (N, num_patches, D), each row
    L2-normalised, patches flattened row-major over the patch grid (the reference order).
    ``grid``: conv feature grid (H, W); ``image_size``: network input (H, W).
    """

    global_desc: torch.Tensor
    patches: dict[int, torch.Tensor]
    grid: tuple[int, int]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.global_desc.shape[0])

    def select(self, i: int) -> "Descriptors":
        """Descriptors of image ``i`` alone (batch of one)."""
        return Descriptors(
            self.global_desc[i : i + 1],
            {p: t[i : i + 1] for p, t in self.patches.items()},
            self.grid,
            self.image_size,
        )

    def numpy(self) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(global (N, D) float32, {P: (N, num_patches, D) float32}) on the CPU."""
        g = self.global_desc.detach().float().cpu().numpy()
        return g, {p: t.detach().float().cpu().numpy() for p, t in self.patches.items()}
