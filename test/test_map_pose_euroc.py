"""The robot's pose in the map on real data: maps of EuRoC V1_01 left images built with their Vicon
body poses (world_T_body), the camera model and (metric) the stereo depth; the body-to-camera
extrinsic of sensorLeft.yaml as ``verification.camera_to_base``; the revisit img_1 queried with
``query --verify --json`` and ``replay``: its ``map_pose`` against its own Vicon pose."""
from __future__ import annotations

import json

import numpy as np

from euroc_fixtures import CHI2_6DOF_999, pose_errors
from vlad_localization.cli.main import main

MAX_POSITION_ERROR_M = 0.10
MAX_ROTATION_DEG = 3.0


def query_map_pose(euroc_env, posed_maps, map_dir, capsys):
    """query --verify --json with img_1: the img_0 keyframe's record (ranked first)."""
    capsys.readouterr()
    assert main(["query", "--map", str(map_dir), "--checkpoint", euroc_env["common"][1],
                 "--config", str(posed_maps["config"]), "--verify", "--intrinsics", euroc_env["intrinsics"],
                 "--json", str(euroc_env["euroc"] / "left_img_1.png")]) == 0
    best = json.loads(capsys.readouterr().out)["candidates"][0]
    assert best["file"].endswith("left_img_0.png") and best["relative_pose"]["status"] == "ok", best
    return best


def revisit(euroc_env, posed_maps, kind: str, capsys):
    """img_1 against the ``kind`` map: (position error, rotation error, [dp, dtheta], covariance) of its
    map_pose, after checking that map_pose and relative_pose agree on being metric."""
    best = query_map_pose(euroc_env, posed_maps, posed_maps[kind], capsys)
    record = best["map_pose"]
    assert record["metric"] is best["relative_pose"]["metric"] is (kind == "metric")
    return (*pose_errors(record, posed_maps["vicon"][1][1]), np.reshape(record["covariance"], (6, 6)))


def test_stereo_map_gives_the_revisits_metric_pose_in_the_map(euroc_env, posed_maps, capsys):
    position, rotation, delta, covariance = revisit(euroc_env, posed_maps, "metric", capsys)
    mahalanobis = float(delta @ np.linalg.solve(covariance, delta))
    with capsys.disabled():
        print(f"map pose, stereo map: position error {100 * position:.1f} cm, rotation {rotation:.2f} deg, "
              f"Mahalanobis^2 {mahalanobis:.2f} (std {np.sqrt(np.diag(covariance)[:3]).round(3)} m)")
    assert position < MAX_POSITION_ERROR_M and rotation < MAX_ROTATION_DEG
    assert mahalanobis < CHI2_6DOF_999 and np.all(np.linalg.eigvalsh(covariance) > 0)
    # the keyframe's own pose is far from the query's: the composition moved it
    keyframe, truth = posed_maps["vicon"][0][1], posed_maps["vicon"][1][1]
    assert np.linalg.norm(keyframe[:3, 3] - truth[:3, 3]) > 3 * MAX_POSITION_ERROR_M


def test_monocular_map_gives_the_orientation_and_a_bounded_position(euroc_env, posed_maps, capsys):
    position, rotation, delta, covariance = revisit(euroc_env, posed_maps, "mono", capsys)
    inside = float(delta[:3] @ np.linalg.solve(covariance[:3, :3], delta[:3]))
    with capsys.disabled():
        print(f"map pose, monocular map: rotation {rotation:.2f} deg, position error {100 * position:.1f} cm "
              f"(the keyframe's), Mahalanobis^2 of the position {inside:.3f} (bound: 1-sigma ellipsoid)")
    assert rotation < MAX_ROTATION_DEG
    assert inside <= 1.0  # the true position lies inside the stated 1-sigma ellipsoid of the baseline bound
    assert np.sqrt(covariance[0, 0]) >= 2.0  # verification.monocular_baseline_m: never a metric-looking position


def test_keyframes_without_a_pose_give_no_map_pose(euroc_env, posed_maps, capsys):
    best = query_map_pose(euroc_env, posed_maps, posed_maps["no_pose"], capsys)
    assert best["relative_pose"]["metric"] is True and best["map_pose"] is None


def test_replay_writes_the_same_map_pose(euroc_env, posed_maps, tmp_path, capsys):
    images = tmp_path / "run"
    images.mkdir()
    (images / "left_img_1.png").write_bytes((euroc_env["euroc"] / "left_img_1.png").read_bytes())
    (images / "stamps.csv").write_text(f"file,stamp\nleft_img_1.png,{posed_maps['vicon'][1][0] / 1e9:.9f}\n")
    out = tmp_path / "run.jsonl"
    assert main(["replay", "--images", str(images), "--poses", str(images / "stamps.csv"),
                 "--map", str(posed_maps["metric"]), "--checkpoint", euroc_env["common"][1],
                 "--config", str(posed_maps["config"]), "--mode", "localize",
                 "--score-threshold", "0", "--verify", "--intrinsics", euroc_env["intrinsics"], "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["loop_closure_match"]["map_id"] == 0 and record["map_pose"]["metric"] is True
    offline = query_map_pose(euroc_env, posed_maps, posed_maps["metric"], capsys)["map_pose"]
    assert np.allclose(record["map_pose"]["position"], offline["position"], atol=1e-6)
    assert np.allclose(record["map_pose"]["covariance"], offline["covariance"], rtol=1e-6, atol=1e-12)
