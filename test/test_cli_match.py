"""`vlad-localization match` end to end on real images with the off-the-shelf checkpoint."""
from __future__ import annotations

import json

import pytest

from vlad_localization.cli.main import main
from vlad_localization.images.io import load_rgb

KEYS = {"global_similarity", "patch_score", "per_size", "inliers", "matcher", "fused_score"}


@pytest.fixture
def config_file(tmp_path):
    """The speed preset at the test checkpoint's 240x320 input size."""
    path = tmp_path / "speed_small.yaml"
    path.write_text("base: speed\nmodel:\n  image_height: 240\n  image_width: 320\n  device: cpu\n")
    return path


def run_match(capsys, checkpoint, config, *args):
    code = main(["match", "--checkpoint", str(checkpoint), "--config", str(config), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_images_score_one(capsys, speed_checkpoint, config_file, datasets_dir):
    image = datasets_dir / "euroc_loop_pairs" / "left_img_0.png"
    code, out, _ = run_match(capsys, speed_checkpoint, config_file, "--matcher", "ransac", image, image)
    assert code == 0
    report = json.loads(out)
    assert set(report) == KEYS and report["matcher"] == "ransac"
    assert report["patch_score"] == 1.0 and report["per_size"] == {"5": 1.0}
    assert report["inliers"] == {"5": 176}  # every patch of the 11 x 16 patch grid
    assert report["global_similarity"] == pytest.approx(1.0, abs=1e-5)


def test_revisit_with_plot(capsys, speed_checkpoint, config_file, datasets_dir, tmp_path):
    euroc = datasets_dir / "euroc_loop_pairs"
    plot = tmp_path / "matches.png"
    code, out, _ = run_match(capsys, speed_checkpoint, config_file, "--plot", plot,
                             euroc / "left_img_1.png", euroc / "left_img_0.png")
    assert code == 0
    revisit = json.loads(out)
    assert revisit["matcher"] == "spatial"  # the speed preset's matcher
    assert 0 < revisit["patch_score"] < 1 and revisit["inliers"]["5"] > 0
    assert load_rgb(plot).shape == (240, 640, 3)
    code, out, _ = run_match(capsys, speed_checkpoint, config_file, euroc / "left_img_1.png",
                             datasets_dir / "gardenspoint_10" / "ref" / "3.jpg")
    other = json.loads(out)
    assert code == 0 and other["patch_score"] < revisit["patch_score"]
    assert 0 <= other["fused_score"] < revisit["fused_score"] <= 1  # the presets' fused P(same place)


def test_user_errors_are_one_line_messages(capsys, speed_checkpoint, config_file, datasets_dir, tmp_path):
    image = datasets_dir / "euroc_loop_pairs" / "left_img_0.png"
    code, _, err = run_match(capsys, speed_checkpoint, config_file, image, tmp_path / "missing.png")
    assert code == 2 and "missing.png" in err and "does not exist" in err
    code, _, err = run_match(capsys, speed_checkpoint, tmp_path / "nope.yaml", image, image)
    assert code == 2 and "neither a preset" in err
    code, _, err = run_match(capsys, speed_checkpoint, config_file, "--plot", tmp_path / "no_dir" / "m.png", image, image)
    assert code == 2 and "could not write the plot" in err
    code, _, err = run_match(capsys, tmp_path / "missing.pth.tar", config_file, image, image)
    assert code == 2 and "missing.pth.tar" in err


def test_help_explains_the_score(capsys):
    with pytest.raises(SystemExit):
        main(["match", "--help"])
    text = capsys.readouterr().out
    for phrase in ("patch_score", "threshold", "[0, 1]", "--plot", "inliers"):
        assert phrase in text
