"""`vlad-localization match` end to end on real images with the off-the-shelf checkpoint."""
from __future__ import annotations

import json

import cv2
import numpy as np

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


def test_pose_with_stereo_calibration_is_metric(capsys, speed_checkpoint, config_file, datasets_dir):
    euroc = datasets_dir / "euroc_loop_pairs"
    calibration = f"{euroc / 'sensorLeft.yaml'},{euroc / 'sensorRight.yaml'}"
    code, out, _ = run_match(capsys, speed_checkpoint, config_file, "--pose", "--calibration", calibration,
                             "--stereo-ref", euroc / "right_img_2.png", euroc / "left_img_3.png", euroc / "left_img_2.png")
    assert code == 0
    pose = json.loads(out)["relative_pose"]
    assert set(pose) == {"R", "t", "metric", "inliers", "covariance", "status", "refine", "match_camera"}
    assert pose["status"] == "ok" and pose["metric"] is True and pose["inliers"] > 300
    assert pose["refine"] == "sift" and pose["match_camera"] is None  # both cameras given
    assert len(pose["covariance"]) == 36 and len(pose["R"]) == 4
    # ground truth (test_verification_real): 0.317 m, mostly along -x of the query camera
    assert np.linalg.norm(pose["t"]) == pytest.approx(0.317, rel=0.08) and pose["t"][0] < -0.25


def test_pose_from_config_intrinsics_and_depth_images(capsys, speed_checkpoint, tmp_path, datasets_dir):
    """verification.intrinsics from the YAML (monocular), then a registered 16-bit depth image (mm) of
    the reference: real depth (from its stereo pair) written at its SIFT keypoints, zero elsewhere,
    gives the metric translation (0.432 m in the ground truth); a depth image of the wrong size is refused."""
    euroc = datasets_dir / "euroc_loop_pairs"
    config = tmp_path / "pose.yaml"
    config.write_text("base: speed\nmodel: {image_height: 240, image_width: 320, device: cpu}\n"
                      "verification: {intrinsics: [458.654, 457.296, 367.215, 248.375, -0.28340811, 0.07395907, "
                      "0.00019359, 1.76187114e-05]}\n")
    code, out, _ = run_match(capsys, speed_checkpoint, config, "--pose", euroc / "left_img_1.png", euroc / "left_img_0.png")
    pose = json.loads(out)["relative_pose"]
    assert code == 0 and pose["status"] == "ok" and pose["metric"] is False
    assert np.linalg.norm(pose["t"]) == pytest.approx(1.0)
    from vlad_localization.verification import StereoRig, load_euroc_sensor, stereo_depth_at
    from vlad_localization.verification.refine import sift_features

    left, right = (load_rgb(euroc / f"{side}_img_0.png") for side in ("left", "right"))
    rig = StereoRig.from_sensors(*(load_euroc_sensor(euroc / f"sensor{s}.yaml") for s in ("Left", "Right")))
    keypoints, _ = sift_features(left)
    depth_m = stereo_depth_at(left, right, rig, keypoints, 20.0)
    depth_mm = np.zeros(left.shape[:2], np.uint16)
    ok = np.isfinite(depth_m)
    x, y = np.rint(keypoints[ok]).astype(int).T
    depth_mm[y, x] = np.round(depth_m[ok] * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "depth.png"), depth_mm)
    code, out, _ = run_match(capsys, speed_checkpoint, config, "--pose", "--depth-ref", tmp_path / "depth.png",
                             euroc / "left_img_1.png", euroc / "left_img_0.png")
    pose = json.loads(out)["relative_pose"]
    assert code == 0 and pose["status"] == "ok" and pose["metric"] is True and pose["inliers"] > 300
    assert np.linalg.norm(pose["t"]) == pytest.approx(0.432, rel=0.08)
    small = tmp_path / "depth_small.png"
    cv2.imwrite(str(small), np.full((240, 376), 2000, np.uint16))
    code, _, err = run_match(capsys, speed_checkpoint, config, "--pose", "--depth-ref", small,
                             euroc / "left_img_1.png", euroc / "left_img_0.png")
    assert code == 2 and "registered pixel to pixel" in err and len(err.strip().splitlines()) == 1


def test_pose_user_errors(capsys, speed_checkpoint, config_file, datasets_dir):
    euroc = datasets_dir / "euroc_loop_pairs"
    images = (euroc / "left_img_1.png", euroc / "left_img_0.png")
    cases = (
        ((), "needs the camera intrinsics"),
        (("--intrinsics", "458,457,367"), "verification.intrinsics must be"),
        (("--intrinsics", "458,457,367,248", "--stereo-ref", euroc / "right_img_0.png"), "--baseline"),
        (("--intrinsics", "458,457,367,248", "--baseline", "0.11"), "only with --stereo"),
        (("--intrinsics", "458,457,367,248", "--stereo-ref", euroc / "right_img_0.png", "--baseline", "-1"),
         "positive"),
        (("--calibration", euroc / "FrontendParams.yaml"), "not a EuRoC sensor.yaml"),
    )
    for flags, message in cases:
        code, _, err = run_match(capsys, speed_checkpoint, config_file, "--pose", *flags, *images)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (flags, err)
    code, _, err = run_match(capsys, speed_checkpoint, config_file, "--depth-ref", euroc / "left_img_0.png", *images)
    assert code == 2 and "only apply with --pose" in err
    with pytest.raises(SystemExit):
        main(["match", "--checkpoint", "x", "--intrinsics", "a,b", *map(str, images)])
    assert "comma-separated list of numbers" in capsys.readouterr().err
