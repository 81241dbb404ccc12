"""Shared fixtures: real data in ../shared (skips in a user's clone, fails under CI=true),
unique ROS_DOMAIN_IDs, and small helpers used across the suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


_DOMAIN = [int(os.environ.get("VLAD_TEST_DOMAIN_BASE", 40 + (os.getpid() % 40)))]


@pytest.fixture
def ros_domain_id(monkeypatch) -> int:
    """A ROS_DOMAIN_ID unique to this test (so parallel tests and runs do not cross-talk)."""
    _DOMAIN[0] = 1 + (_DOMAIN[0] % 200)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(_DOMAIN[0]))
    return _DOMAIN[0]
