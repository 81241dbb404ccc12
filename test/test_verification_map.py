"""Verification against a prebuilt map, on real data: maps of EuRoC V1_01 left images built with the
camera model (sensorLeft.yaml) and, for the metric case, registered depth from the stereo pair,
queried with the revisit 98 s later (img_1 -> img_0) against the Vicon ground truth; an old-format
map (no views) still verifies, from the patch keypoints; a run saved with its views is verified
against by a later run; a bag's CameraInfo becomes the keyframes' camera model."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from euroc_fixtures import MAP_IMAGES, build_euroc_map, errors, ground_truth
from test_mapdb_integrity import as_old_version, flip_bit
from vlad_localization.cli.main import main
from vlad_localization.images.io import load_rgb
from vlad_localization.mapdb import MapDatabase

MAX_ROTATION_DEG = 5.0  # the tolerances of test_verification_online, with margin
MAX_DIRECTION_DEG = 15.0
MAX_SCALE_ERROR = 0.2


@pytest.fixture(scope="module")
def mono_map(euroc_env):
    return build_euroc_map(euroc_env, "mono")


@pytest.fixture(scope="module")
def depth_map(euroc_env):
    return build_euroc_map(euroc_env, "depth_map", "--depth", str(euroc_env["depth"]))


def query_revisit(euroc_env, map_dir, capsys, *flags) -> dict:
    """query --verify --json with img_1: the img_0 keyframe's candidate record (ranked first)."""
    capsys.readouterr()
    assert main(["query", "--map", str(map_dir), *euroc_env["common"], "--verify", "--intrinsics",
                 euroc_env["intrinsics"],
                 "--json", str(euroc_env["euroc"] / "left_img_1.png"), *flags]) == 0
    candidates = json.loads(capsys.readouterr().out)["candidates"]
    assert candidates[0]["file"].endswith("left_img_0.png"), candidates
    assert all("relative_pose" in c for c in candidates if c["patch_score"] is not None)
    return candidates[0]


class Pose:
    """What errors() reads, from a relative_pose record."""

    def __init__(self, record):
        x, y, z, w = record["R"]
        self.rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        self.translation = np.array(record["t"])


def test_a_map_with_views_gives_the_revisit_a_monocular_pose(euroc_env, mono_map, capsys):
    with MapDatabase.open(mono_map) as db:
        assert db.manifest.version == 3 and db.manifest.views == {"cameras": 2, "images": 2, "depth": 0}
        view = db.view(0)
        assert view.camera == euroc_env["sensor"].camera and view.image_hw == (480, 752) and view.depth is None
        per_keyframe = db.stats()["views"]["image_bytes"] / 2
    assert main(["map-info", str(mono_map)]) == 0
    assert "views     2 keyframes with a camera model, 2 with their image" in capsys.readouterr().out
    pose = query_revisit(euroc_env, mono_map, capsys)["relative_pose"]
    assert pose["status"] == "ok" and pose["refine"] == "sift" and pose["match_camera"] == "map"
    assert not pose["metric"] and pose["inliers"] > 300
    rotation, direction, _ = errors(Pose(pose), ground_truth(euroc_env["euroc"], 1, 0))
    with capsys.disabled():
        print(f"map view, monocular: {rotation:.2f} deg, direction {direction:.2f} deg, {pose['inliers']} inliers; "
              f"{per_keyframe / 1e3:.0f} kB per keyframe")
    assert rotation < MAX_ROTATION_DEG and direction < MAX_DIRECTION_DEG


def test_a_map_with_depth_gives_a_metric_pose(euroc_env, depth_map, capsys):
    with MapDatabase.open(depth_map) as db:
        assert db.manifest.views == {"cameras": 2, "images": 2, "depth": 2}
        stats = db.stats()["views"]
        assert db.view(0).depth_image().dtype == np.uint16
    pose = query_revisit(euroc_env, depth_map, capsys)["relative_pose"]
    assert pose["status"] == "ok" and pose["metric"] and pose["refine"] == "sift"
    rotation, direction, scale = errors(Pose(pose), ground_truth(euroc_env["euroc"], 1, 0))
    with capsys.disabled():
        print(f"map view + depth, metric: {rotation:.2f} deg, direction {direction:.2f} deg, scale {scale:.3f}; "
              f"{(stats['image_bytes'] + stats['depth_bytes']) / 2e3:.0f} kB per keyframe "
              f"({stats['depth_bytes'] / 2e3:.0f} kB depth)")
    assert rotation < MAX_ROTATION_DEG and direction < MAX_DIRECTION_DEG and abs(scale - 1) < MAX_SCALE_ERROR


def test_an_old_map_opens_and_verifies_from_the_patch_keypoints(euroc_env, mono_map, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(mono_map, old)
    as_old_version(old, 2)
    assert main(["map-info", "--verify", str(old)]) == 0
    assert "views     none (format v2)" in capsys.readouterr().out
    pose = query_revisit(euroc_env, old, capsys)["relative_pose"]
    assert pose["refine"] == "none" and pose["match_camera"] == "query"  # monocular, the query's camera for both
    assert pose["status"] != "no_features" and not pose["metric"]
    with capsys.disabled():
        print(f"old map, patch keypoints: {pose['status']} ({pose['inliers']} inliers)")
    # the camera model alone (--no-views): the patch keypoints, with the keyframe's own camera
    pose = query_revisit(euroc_env, build_euroc_map(euroc_env, "cameras_only", "--no-views"), capsys)["relative_pose"]
    assert pose["refine"] == "none" and pose["match_camera"] == "map"


def test_a_bit_flip_in_the_views_is_found(mono_map, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(mono_map, damaged)
    flip_bit(damaged / "views.sqlite", (damaged / "views.sqlite").stat().st_size // 2)
    assert main(["map-info", "--verify", str(damaged)]) == 1
    assert f"DAMAGED {damaged / 'views.sqlite'}: sha256" in capsys.readouterr().err


def test_a_saved_run_keeps_its_views_and_a_later_run_verifies_against_it(euroc_env, speed_checkpoint, speed_config,
                                                                                tmp_path):
    from vlad_localization.config import apply_overrides
    from vlad_localization.detector import LoopClosureDetector

    cam = euroc_env["sensor"].camera
    verify = {"verification.enabled": True, "verification.intrinsics": [cam.fx, cam.fy, cam.cx, cam.cy,
                                                                         *cam.distortion[:4]]}
    first = LoopClosureDetector.from_config(apply_overrides(speed_config, {"loop_closure.mode": "loop_closure",
                                                                           **verify}), speed_checkpoint)
    try:
        for i, stamp in zip(MAP_IMAGES, (0, 10)):
            assert first.process(stamp * 10**9, load_rgb(euroc_env["euroc"] / f"left_img_{i}.png")).keyframe is not None
        first.save_map(tmp_path / "run1")
    finally:
        first.release()
    with MapDatabase.open(tmp_path / "run1") as db:
        assert db.manifest.views == {"cameras": 2, "images": 2, "depth": 0} and db.view(0).camera == cam
    second = LoopClosureDetector.from_config(
        apply_overrides(speed_config, {"loop_closure.mode": "localize", "loop_closure.score_threshold": 0.0, **verify}),
        speed_checkpoint, map_path=tmp_path / "run1")
    try:
        result = second.process(200 * 10**9, load_rgb(euroc_env["euroc"] / "left_img_1.png"))
    finally:
        second.release()
    closure, pose = result.loop_closure, result.relative_pose
    assert closure is not None and (closure.candidate.source, closure.candidate.map_id) == (0, 0)
    assert pose.ok and pose.refine == "sift" and pose.match_camera == "map" and not pose.metric
    rotation, direction, _ = errors(pose, ground_truth(euroc_env["euroc"], 1, 0))
    print(f"saved run's view: {rotation:.2f} deg, direction {direction:.2f} deg, {pose.inliers} inliers")
    assert rotation < MAX_ROTATION_DEG and direction < MAX_DIRECTION_DEG
    assert result.to_record()["relative_pose"]["match_camera"] == "map"


def test_a_bags_camera_info_and_depth_are_stored_per_keyframe(euroc_env, tmp_path):
    from vlad_localization.images import Frame, write_bag
    from vlad_localization.verification.depth import load_depth

    cam = euroc_env["sensor"].camera
    frames = [Frame(i * 10**9, "cam0", image=load_rgb(euroc_env["euroc"] / f"left_img_{i}.png"), camera=cam,
                    depth=load_depth(euroc_env["depth"] / f"left_img_{i}.png")) for i in MAP_IMAGES]
    bag = write_bag(tmp_path / "bag", frames, "/cam0/image_raw", camera_info=True, depth_topic="/cam0/depth")
    out = tmp_path / "map"
    assert main(["build-map", *euroc_env["common"], "--bag", str(bag), "--image-topic", "/cam0/image_raw",
                 "--depth-topic", "/cam0/depth", "--out", str(out), "--no-progress"]) == 0
    with MapDatabase.open(out) as db:
        assert db.manifest.views == {"cameras": 2, "images": 2, "depth": 2}
        assert db.view(1).camera == cam and np.array_equal(db.view(1).depth_image(), frames[1].depth)


@pytest.mark.parametrize("source", ["folder", "bag"])
def test_replay_with_depth_gives_the_runs_closure_a_metric_pose(euroc_env, tmp_path, capsys, source):
    """replay --depth (the folder build-map reads) or --depth-topic (a bag's): the run's keyframe img_0
    keeps its depth, the revisit img_1 (100 s later, no depth of its own) is verified against it with PnP."""
    images = tmp_path / "run"
    images.mkdir()
    for i in (0, 1):
        shutil.copy(euroc_env["euroc"] / f"left_img_{i}.png", images)
    if source == "folder":
        (images / "stamps.csv").write_text("file,stamp\nleft_img_0.png,0\nleft_img_1.png,100\n")
        flags = ["--images", str(images), "--poses", str(images / "stamps.csv"), "--depth", str(euroc_env["depth"])]
    else:
        from vlad_localization.images import Frame, write_bag
        from vlad_localization.verification.depth import load_depth

        frames = [Frame(0, "cam0", image=load_rgb(images / "left_img_0.png"),
                        depth=load_depth(euroc_env["depth"] / "left_img_0.png")),
                  Frame(100 * 10**9, "cam0", image=load_rgb(images / "left_img_1.png"))]
        bag = write_bag(tmp_path / "bag", frames, "/cam0/image_raw", depth_topic="/cam0/depth")
        flags = ["--bag", str(bag), "--image-topic", "/cam0/image_raw", "--depth-topic", "/cam0/depth"]
    out = tmp_path / "run.jsonl"
    assert main(["replay", *flags, *euroc_env["common"], "--mode", "loop_closure", "--score-threshold", "0",
                 "--min-gap", "30", "--verify", "--intrinsics", euroc_env["intrinsics"], "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["keyframe"] == 0 and records[1]["loop_closure"] == [100.0, 0.0]
    pose = records[1]["relative_pose"]
    assert pose["status"] == "ok" and pose["metric"] and pose["match_camera"] == "map"
    rotation, direction, scale = errors(Pose(pose), ground_truth(euroc_env["euroc"], 1, 0))
    with capsys.disabled():
        print(f"replay, depth from a {source}, metric: {rotation:.2f} deg, direction {direction:.2f} deg, "
              f"scale {scale:.3f}")
    assert rotation < MAX_ROTATION_DEG and direction < MAX_DIRECTION_DEG and abs(scale - 1) < MAX_SCALE_ERROR
    if source == "bag":
        assert "depth: matched 1, unmatched 1" in capsys.readouterr().err
    else:
        assert main(["replay", "--bag", str(images), "--image-topic", "/x", *euroc_env["common"], "--depth",
                     str(euroc_env["depth"])]) == 2
        assert "--depth applies to --images" in capsys.readouterr().err
