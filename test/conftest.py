"""Shared fixtures: real data in ../shared (skips in a user's clone, fails under CI=true), the small
speed model and its configuration, and small helpers used across the suite. The fixtures of the ROS
tests (maps, nodes, ROS_DOMAIN_IDs) and of the EuRoC tests live in the modules registered below."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytest_plugins = ("ros_fixtures", "euroc_fixtures")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        msg = (
            f"{what} not found at {path}: these tests need the real data in ../shared "
            "(set VLAD_SHARED to point elsewhere)"
        )
        if IN_CI:
            pytest.fail(msg + " - it is always present under CI=true")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """``../shared/datasets`` (real place-recognition images)."""
    return _require(SHARED / "datasets", "the shared datasets")


@pytest.fixture(scope="session")
def vgg16_weights() -> Path:
    """ImageNet VGG16 conv1_1..conv5_3 weights (torchvision key layout)."""
    return _require(SHARED / "weights" / "vgg16_imagenet_conv5_3.pth", "the ImageNet VGG16 weights")


# ---------------------------------------------------------------- model fixtures (vlad_localization.model)
SPEED_IMAGE_SIZE = (240, 320)
# the model section matching speed_checkpoint: the one small test configuration (speed_config, speed_config_file)
SPEED_MODEL = {"num_clusters": 16, "num_pcs": 128, "patch_sizes": [5], "strides": [1],
               "image_height": SPEED_IMAGE_SIZE[0], "image_width": SPEED_IMAGE_SIZE[1], "device": "cpu", "batch_size": 4}


def _speed_images(datasets_dir: Path) -> list[Path]:
    """A dozen real images of varied places: campus loop keyframes and Gardens Point (day/night)."""
    campus = [datasets_dir / "campus_loop_72" / f"image_{i}.png" for i in range(0, 72, 12)]
    garden = [datasets_dir / "gardenspoint_10" / sub / f"{i}.jpg" for sub in ("ref", "query") for i in (0, 4, 8)]
    return [p for p in campus + garden if p.is_file()]


@pytest.fixture(scope="session")
def speed_checkpoint(tmp_path_factory, vgg16_weights, datasets_dir) -> Path:
    """A small off-the-shelf VGG16 Patch-NetVLAD checkpoint in the official format, built once per
    session from 12 real images: 16 clusters, 128 WPCA dims, patch size 5 / stride 1, fitted at
    240x320. Use it with :func:`speed_config` (or a ModelConfig with image_height=240,
    image_width=320, patch_sizes=[5], strides=[1]; num_clusters/num_pcs come from the checkpoint).
    Descriptors are 128-D; the conv grid is 15x20, so 11x16 = 176 patches per image."""
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint

    out = tmp_path_factory.mktemp("model") / "speed_vgg16_k16_pcs128.pth.tar"
    return build_offtheshelf_checkpoint(
        vgg16_weights,
        _speed_images(datasets_dir),
        out,
        num_clusters=16,
        num_pcs=128,
        patch_sizes=(5,),
        strides=(1,),
        image_size=SPEED_IMAGE_SIZE,
        device="cpu",
        seed=0,
        max_pca_samples=1000,
        kmeans_iterations=25,
        progress=False,
    )


@pytest.fixture
def speed_config():
    """A fresh ``Config``: the ``speed`` preset with the model section matching
    :func:`speed_checkpoint` (16 clusters, 128 PCs, patch 5 stride 1, 240x320 input, CPU,
    batch 4). Function-scoped, so tests may modify it."""
    from vlad_localization.config import apply_overrides, load_config

    return apply_overrides(load_config("speed"), {f"model.{k}": v for k, v in SPEED_MODEL.items()}).validate()


@pytest.fixture(scope="session")
def speed_config_file(tmp_path_factory) -> Path:
    """:func:`speed_config` as a YAML file for the CLI (``base: speed`` and its model section)."""
    import yaml

    path = tmp_path_factory.mktemp("speed_config") / "small.yaml"
    path.write_text(yaml.safe_dump({"base": "speed", "model": SPEED_MODEL}))
    return path


@pytest.fixture(scope="session")
def speed_encoder(speed_checkpoint):
    """A CPU :class:`~vlad_localization.model.encoder.Encoder` on :func:`speed_checkpoint`
    (shared by the session: do not modify it)."""
    from vlad_localization.config import load_config
    from vlad_localization.model.encoder import Encoder

    cfg = load_config("speed").model
    cfg.patch_sizes, cfg.strides = [5], [1]
    cfg.image_height, cfg.image_width = SPEED_IMAGE_SIZE
    return Encoder.from_checkpoint(speed_checkpoint, cfg, device="cpu")


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
