"""The backbone split for training: a frozen trunk whose conv features are computed once and cached
(as ``init-model`` does), and the trained part (nothing, or the last block: ``--train-layers``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from vlad_localization.choices import TRAIN_LAYERS, names
from vlad_localization.model.backbones import VGG16Conv5
from vlad_localization.model.preprocess import to_network_input

from .data import TrainingDataError

VGG16_CONV5_START = 24  # index of conv5_1 in VGG16Conv5 (after pool4)
LAST_BLOCK = {"conv5": "vgg16", "layer3": "resnet"}


def split_backbone(backbone: nn.Module, backbone_name: str, train_layers: str) -> tuple[nn.Module, nn.Module]:
    """(frozen trunk, trained head) of ``backbone``; the head shares its modules (an identity for
    ``none``), so training it trains ``backbone``."""
    if train_layers not in TRAIN_LAYERS:
        raise TrainingDataError(f"--train-layers {train_layers!r}: use one of {names(TRAIN_LAYERS)}")
    if train_layers == "none":
        return backbone, nn.Identity()
    if not backbone_name.startswith(LAST_BLOCK[train_layers]):
        want = next(k for k, v in LAST_BLOCK.items() if backbone_name.startswith(v))
        raise TrainingDataError(f"--train-layers {train_layers} does not fit the checkpoint's {backbone_name} "
                                f"backbone: use --train-layers {want} or none")
    if isinstance(backbone, VGG16Conv5):
        layers = list(backbone)  # the same modules: training the head trains the backbone
        return nn.Sequential(*layers[:VGG16_CONV5_START]), nn.Sequential(*layers[VGG16_CONV5_START:])
    trunk = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool, backbone.layer1,
                          backbone.layer2)
    return trunk, backbone.layer3


def cache_features(trunk: nn.Module, frames: Sequence, image_size: tuple[int, int], device: torch.device,
                   batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """The trunk's conv features of every frame's image, (N, C, h, w) float16 on the CPU (half the
    memory; the pooling runs in float32). Images are released after use when they can be reloaded."""
    out = []
    trunk = trunk.eval().to(device)
    with torch.inference_mode():
        bar = tqdm(total=len(frames), desc="conv features (once)", unit="img", disable=not progress)
        for lo in range(0, len(frames), batch_size):
            batch = frames[lo : lo + batch_size]
            x = to_network_input([f.rgb for f in batch], *image_size).to(device)
            out.append(trunk(x).to("cpu", torch.float16))
            for f in batch:
                if f.loader is not None:
                    f.image = None
            bar.update(len(batch))
        bar.close()
    return torch.cat(out)
