"""The Patch-NetVLAD encoder: image -> global descriptor + multi-scale patch descriptors.

    enc = Encoder.from_checkpoint("pittsburgh_WPCA512.pth.tar", load_config("speed").model)
    desc = enc.encode([load_rgb("a.png"), load_rgb("b.png")])   # Descriptors
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import ModelConfig
from .backbones import build_backbone
from .checkpoint import CheckpointError, file_sha256, load_module_state, read_checkpoint
from .descriptors import Descriptors
from .device import resolve_device, use_half
from .netvlad import PatchNetVLADPooling
from .preprocess import to_network_input
from .wpca import WPCA

log = logging.getLogger(__name__)


class Encoder:
    """Backbone + NetVLAD/Patch-NetVLAD pooling + optional WPCA, on one device, inference only."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        pooling: PatchNetVLADPooling,
        wpca: WPCA | None,
        cfg: ModelConfig,
        device: str | torch.device | None = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        self.device = resolve_device(device if device is not None else cfg.device)
        self.half = use_half(self.device, cfg.half)
        self.cfg = dataclasses.replace(
            cfg,
            num_clusters=pooling.num_clusters,
            num_pcs=None if wpca is None else wpca.num_pcs,
            vladv2=pooling.vladv2,
            patch_sizes=list(pooling.patch_sizes),
            strides=list(pooling.strides),
        )
        self.backbone = backbone.eval().to(self.device)
        if self.half:
            self.backbone.half()
        self.pooling = pooling.eval().to(self.device)
        self.wpca = None if wpca is None else wpca.eval().to(self.device)
        self.geometry = backbone.geometry
        self.checkpoint_sha256 = checkpoint_sha256
        for module in (self.backbone, self.pooling, self.wpca):
            if module is not None:
                module.requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, model_cfg: ModelConfig, device: str | None = None) -> "Encoder":
        """Build from an official-format checkpoint (a file, or a known name such as
        ``pittsburgh_WPCA512`` read from the cache); num_clusters, num_pcs and vladv2 come from
        its tensor shapes (the config's values are only checked), patch sizes / strides / image
        size / device / half from ``model_cfg``. ``model_cfg.num_pcs = None`` skips the WPCA."""
        contents = read_checkpoint(path)
        path = contents.path  # a known checkpoint's name resolves to its cached file
        if not contents.has_pooling:
            raise CheckpointError(
                path,
                "holds only backbone weights, no NetVLAD layer: build a model first with "
                "`vlad-localization init-model --backbone-weights ...`",
            )
        if contents.backbone != model_cfg.backbone:
            log.warning("config backbone %s differs from checkpoint's %s: using %s",
                        model_cfg.backbone, contents.backbone, contents.backbone)
        backbone = build_backbone(contents.backbone)
        load_module_state(backbone, contents.backbone_state, contents.path, "backbone")
        if contents.dim != backbone.out_channels:
            raise CheckpointError(
                path, f"NetVLAD dim {contents.dim} != {contents.backbone} output channels {backbone.out_channels}"
            )
        pooling = PatchNetVLADPooling(
            contents.num_clusters, contents.dim, model_cfg.normalize_input, contents.vladv2,
            model_cfg.patch_sizes, model_cfg.strides,
        )
        load_module_state(pooling, contents.pool_state, contents.path, "NetVLAD")
        wpca = None
        if model_cfg.num_pcs is not None:
            if contents.wpca_weight is None:
                log.warning("%s has no WPCA layer: descriptors are raw %d-D VLAD vectors",
                            path, contents.num_clusters * contents.dim)
            else:
                wpca = WPCA.from_conv(contents.wpca_weight.float(), contents.wpca_bias)
        for name, ours, theirs in (
            ("num_clusters", model_cfg.num_clusters, contents.num_clusters),
            ("num_pcs", model_cfg.num_pcs, None if wpca is None else wpca.num_pcs),
        ):
            if ours is not None and ours != theirs:
                log.info("model.%s=%s in the config, the checkpoint has %s: using the checkpoint's", name, ours, theirs)
        cfg = dataclasses.replace(model_cfg, backbone=contents.backbone)
        return cls(backbone, pooling, wpca, cfg, device, checkpoint_sha256=file_sha256(path))

    # ------------------------------------------------------------------ encoding
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images -> normalised N x 3 x H x W tensor on the encoder's device."""
        x = to_network_input(images, self.cfg.image_height, self.cfg.image_width)
        return x.to(self.device, non_blocking=True)

    def encode(self, images: Sequence[np.ndarray]) -> Descriptors:
        """Descriptors of RGB uint8 images, in batches of ``cfg.batch_size``."""
        if len(images) == 0:
            raise ValueError("encode: no images given")
        step = max(1, int(self.cfg.batch_size))
        parts = [self.encode_tensor(self.preprocess(images[i : i + step])) for i in range(0, len(images), step)]
        return parts[0] if len(parts) == 1 else concat_descriptors(parts)

    def encode_tensor(self, x: torch.Tensor) -> Descriptors:
        """Descriptors of an already normalised N x 3 x H x W batch."""
        grid = self.geometry.grid_size(int(x.shape[2]), int(x.shape[3]))
        need = max(self.pooling.patch_sizes, default=1)
        if min(grid) < need:  # before the backbone, whose own error would be cryptic
            raise ValueError(f"a {x.shape[2]}x{x.shape[3]} input gives a {grid[0]}x{grid[1]} conv grid, too small "
                             f"for patch size {need}: use images of at least {need * self.geometry.stride} px per side")
        with torch.inference_mode():
            x = x.to(self.device)
            feats = self.backbone(x.half() if self.half else x.float())
            global_desc, patches = self.pooling(feats.float(), self.wpca)
        return Descriptors(
            global_desc=global_desc,
            patches=patches,
            grid=(int(feats.shape[2]), int(feats.shape[3])),
            image_size=(int(x.shape[2]), int(x.shape[3])),
        )

    # ------------------------------------------------------------------ bookkeeping
    @property
    def descriptor_dim(self) -> int:
        return self.wpca.num_pcs if self.wpca is not None else self.pooling.num_clusters * self.pooling.dim

    def identity(self) -> dict:
        """What must match between a map and the encoder querying it (plain types)."""
        return {
            "backbone": self.cfg.backbone,
            "num_clusters": int(self.pooling.num_clusters),
            "num_pcs": None if self.wpca is None else int(self.wpca.num_pcs),
            "vladv2": bool(self.pooling.vladv2),
            "patch_sizes": [int(p) for p in self.pooling.patch_sizes],
            "strides": [int(s) for s in self.pooling.strides],
            "image_height": int(self.cfg.image_height),
            "image_width": int(self.cfg.image_width),
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    def release(self) -> None:
        """Move the weights to the CPU and free cached accelerator memory."""
        for module in (self.backbone, self.pooling, self.wpca):
            if module is not None:
                module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.device = torch.device("cpu")
        self.half = False
        self.backbone.float()


def concat_descriptors(parts: Sequence[Descriptors]) -> Descriptors:
    """Join Descriptors of batches encoded at the same input size."""
    sizes = {p.image_size for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"cannot join descriptors of different input sizes {sorted(sizes)}")
    return Descriptors(
        global_desc=torch.cat([p.global_desc for p in parts]),
        patches={k: torch.cat([p.patches[k] for p in parts]) for k in parts[0].patches},
        grid=parts[0].grid,
        image_size=parts[0].image_size,
    )
