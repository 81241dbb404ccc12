"""`vlad-localization encode` / `init-model` from the outside (subprocesses)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vlad_localization.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_encode_writes_npz(tmp_path, speed_checkpoint, datasets_dir):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"base": "speed", "model": {"image_height": 240, "image_width": 320}}))
    images = [datasets_dir / "tokyo_pair" / "ref" / "tokyo_db.png", datasets_dir / "tokyo_pair" / "query" / "tokyo_query.jpg"]
    out = tmp_path / "desc.npz"
    proc = _cli("encode", "--checkpoint", speed_checkpoint, "--config", config, "--device", "cpu", "--out", out, *images)
    assert proc.returncode == 0, proc.stderr
    data = np.load(out)
    assert set(data.files) >= {"global", "patches_5", "images", "grid", "image_size"}
    assert data["global"].shape == (2, 128) and data["global"].dtype == np.float32
    assert data["patches_5"].shape == (2, 176, 128) and data["patches_5"].dtype == np.float32
    assert tuple(data["grid"]) == (15, 20)


def test_encode_errors_are_user_errors(tmp_path, datasets_dir):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"garbage")
    proc = _cli("encode", "--checkpoint", bad, "--out", tmp_path / "o.npz",
                datasets_dir / "tokyo_pair" / "ref" / "tokyo_db.png")
    assert proc.returncode == 2
    assert "error: checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["encode", "init-model"])
def test_help_explains_with_example(command):
    proc = _cli(command, "--help")
    assert proc.returncode == 0
    assert "Example:" in proc.stdout and ("--checkpoint" in proc.stdout or "--backbone-weights" in proc.stdout)


def test_init_model_cli(tmp_path, vgg16_weights, datasets_dir):
    out = tmp_path / "m.pth.tar"
    images = [datasets_dir / "gardenspoint_10" / "ref" / f"{i}.jpg" for i in range(3)]
    proc = _cli("init-model", "--backbone-weights", vgg16_weights, "--images", *images,
                "--num-clusters", 4, "--num-pcs", 16, "--image-height", 128, "--image-width", 160,
                "--max-pca-samples", 500, "--out", out)
    assert proc.returncode == 0, proc.stderr
    state = __import__("torch").load(out, weights_only=True)["state_dict"]
    assert state["WPCA.0.weight"].shape == (16, 4 * 512, 1, 1)
    assert "it/s" in proc.stderr or "%" in proc.stderr  # tqdm progress
