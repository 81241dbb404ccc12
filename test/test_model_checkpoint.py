"""Checkpoint loading: official format round-trip, backbone files, and safe refusal of bad files."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

from vlad_localization.config import ModelConfig
from vlad_localization.model.backbones import build_backbone
from vlad_localization.model.checkpoint import CheckpointError, load_torch_file, read_checkpoint, save_checkpoint
from vlad_localization.model.encoder import Encoder
from vlad_localization.model.netvlad import PatchNetVLADPooling
from vlad_localization.model.wpca import WPCA


def _official_like(path: Path, k=4, pcs=8, vladv2=False, backbone="vgg16") -> Path:
    """A small checkpoint in the official layout (random weights)."""
    torch.manual_seed(0)
    net = build_backbone(backbone)
    pool = PatchNetVLADPooling(k, net.out_channels, vladv2=vladv2)
    conv = torch.nn.Conv2d(k * net.out_channels, pcs, 1)
    return save_checkpoint(path, net, pool, {"WPCA.0.weight": conv.weight.data, "WPCA.0.bias": conv.bias.data})


@pytest.mark.parametrize("vladv2", [False, True])
def test_official_layout_round_trip(tmp_path, vladv2):
    path = _official_like(tmp_path / "m.pth.tar", vladv2=vladv2)
    raw = torch.load(path, weights_only=True)
    state = raw["state_dict"]
    assert {"encoder.0.weight", "encoder.28.bias", "pool.centroids", "pool.conv.weight",
            "WPCA.0.weight", "WPCA.0.bias"} <= set(state)
    assert state["WPCA.0.weight"].shape == (8, 4 * 512, 1, 1)
    assert ("pool.conv.bias" in state) == vladv2
    contents = read_checkpoint(path)
    assert (contents.num_clusters, contents.num_pcs, contents.vladv2, contents.backbone) == (4, 8, vladv2, "vgg16")
    cfg = ModelConfig(num_clusters=64, num_pcs=4096, patch_sizes=[2], strides=[1], image_height=64, image_width=96)
    enc = Encoder.from_checkpoint(path, cfg, device="cpu")
    assert enc.identity()["num_clusters"] == 4 and enc.identity()["num_pcs"] == 8
    assert enc.identity()["vladv2"] == vladv2
    wpca = WPCA.from_conv(state["WPCA.0.weight"], state["WPCA.0.bias"])
    for key, value in wpca.conv_state().items():
        assert torch.equal(value, state[key])


def test_resnet_checkpoint_loads(tmp_path):
    path = _official_like(tmp_path / "r.pth.tar", backbone="resnet18")
    cfg = ModelConfig(backbone="resnet18", patch_sizes=[2], strides=[1], image_height=64, image_width=80)
    enc = Encoder.from_checkpoint(path, cfg, device="cpu")
    import numpy as np

    desc = enc.encode([np.zeros((50, 70, 3), np.uint8)])
    assert desc.grid == (4, 5) == enc.geometry.grid_size(64, 80)
    assert desc.patches[2].shape == (1, 3 * 4, 8)


def test_backbone_only_file_is_not_a_model(vgg16_weights):
    contents = read_checkpoint(vgg16_weights)
    assert contents.backbone == "vgg16" and not contents.has_pooling
    with pytest.raises(CheckpointError, match="init-model"):
        Encoder.from_checkpoint(vgg16_weights, ModelConfig(), device="cpu")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"encoder.0.weight": torch.zeros(1)}, "x": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # a plain (non-zip) pickle too
    legacy = tmp_path / "evil.pkl"
    legacy.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError):
        load_torch_file(legacy)
    assert not marker.exists()


def test_truncated_file(tmp_path):
    path = _official_like(tmp_path / "m.pth.tar")
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt") as info:
        read_checkpoint(cut)
    assert "cut.pth.tar" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint"])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


@pytest.mark.parametrize("content", [
    b"\x89PNG\r\n\x1a\n" + bytes(64),  # an image passed by mistake
    random.Random(0).randbytes(4096),
    b"state_dict = {}\n",
])
def test_non_torch_file_is_named_as_such_not_refused(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        read_checkpoint(path)
    assert "refused" not in str(info.value) and "x.png" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth.tar")


def _edit(tmp_path, edit) -> Path:
    src = _official_like(tmp_path / "m.pth.tar")
    raw = torch.load(src, weights_only=True)
    edit(raw["state_dict"])
    out = tmp_path / "edited.pth.tar"
    torch.save(raw, out)
    return out


def test_missing_keys(tmp_path):
    path = _edit(tmp_path, lambda s: s.pop("pool.centroids"))
    with pytest.raises(CheckpointError, match="pool.centroids"):
        read_checkpoint(path)
    path = _edit(tmp_path, lambda s: s.pop("encoder.26.weight"))
    with pytest.raises(CheckpointError, match="missing backbone key.*26.weight"):
        Encoder.from_checkpoint(path, ModelConfig(patch_sizes=[2], strides=[1]), device="cpu")


def test_wrong_shapes(tmp_path):
    path = _edit(tmp_path, lambda s: s.__setitem__("WPCA.0.weight", torch.zeros(8, 100, 1, 1)))
    with pytest.raises(CheckpointError, match="WPCA.0.weight"):
        read_checkpoint(path)
    path = _edit(tmp_path, lambda s: s.__setitem__("encoder.28.weight", torch.zeros(512, 512, 1, 1)))
    with pytest.raises(CheckpointError, match="wrong backbone shape"):
        Encoder.from_checkpoint(path, ModelConfig(patch_sizes=[2], strides=[1]), device="cpu")
    path = _edit(tmp_path, lambda s: s.__setitem__("pool.conv.weight", torch.zeros(3, 512, 1, 1)))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        read_checkpoint(path)


def test_dataparallel_parts_and_old_batchnorm_files_load(tmp_path):
    """The reference trainer on several GPUs wraps encoder and pool separately ('encoder.module.N.*',
    'pool.module.*'); ResNet files saved before PyTorch 0.4.1 have no BatchNorm counters."""
    import numpy as np

    def wrap_parts(state):
        for key in list(state):
            if key.startswith(("encoder.", "pool.")):
                part, rest = key.split(".", 1)
                state[f"{part}.module.{rest}"] = state.pop(key)

    path = _edit(tmp_path, wrap_parts)
    cfg = ModelConfig(patch_sizes=[2], strides=[1], image_height=64, image_width=64)
    image = [np.full((64, 64, 3), 90, np.uint8)]
    plain = Encoder.from_checkpoint(_official_like(tmp_path / "plain.pth.tar"), cfg, device="cpu").encode(image)
    wrapped = Encoder.from_checkpoint(path, cfg, device="cpu").encode(image)
    assert torch.equal(plain.global_desc, wrapped.global_desc)

    old = _official_like(tmp_path / "r.pth.tar", backbone="resnet18")
    raw = torch.load(old, weights_only=True)
    raw["state_dict"] = {k: v for k, v in raw["state_dict"].items() if not k.endswith("num_batches_tracked")}
    torch.save(raw, old)
    Encoder.from_checkpoint(old, ModelConfig(backbone="resnet18", patch_sizes=[2], strides=[1]), device="cpu")


def test_zero_dimensional_wpca_is_refused(tmp_path):
    path = _edit(tmp_path, lambda s: (s.__setitem__("WPCA.0.weight", torch.zeros(0, 4 * 512, 1, 1)),
                                      s.__setitem__("WPCA.0.bias", torch.zeros(0))))
    with pytest.raises(CheckpointError, match="num_pcs"):
        read_checkpoint(path)


def test_reference_trainer_checkpoint_with_numpy_scores_loads(tmp_path):
    """The official train.py also saves ``best_score`` and ``recalls`` as numpy floats: data, loaded."""
    import numpy as np

    raw = torch.load(_official_like(tmp_path / "m.pth.tar"), weights_only=True)
    raw.update(epoch=3, best_score=np.float64(0.87), recalls={1: np.float64(0.8), 5: np.float32(0.9)})
    torch.save(raw, tmp_path / "trained.pth.tar")
    assert torch.load(tmp_path / "trained.pth.tar", weights_only=False)["best_score"] == 0.87  # written as numpy
    contents = read_checkpoint(tmp_path / "trained.pth.tar")
    assert (contents.num_clusters, contents.num_pcs) == (4, 8)
