"""The robot's pose in the map on real data: maps of EuRoC V1_01 left images built with their Vicon
body poses (world_T_body), the camera model and (metric) the stereo depth; the body-to-camera
extrinsic of sensorLeft.yaml as ``verification.camera_to_base``; the revisit img_1 queried with
``query --verify --json`` and ``replay``: its ``map_pose`` against its own Vicon pose."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from test_verification_map import build, env  # noqa: F401  (fixture)
from test_verification_real import CHI2_6DOF_999, vicon_poses
from vlad_localization.cli.main import main
from vlad_localization.verification.map_pose import pose_matrix
from vlad_localization.verification.relative_pose import quaternion_xyzw

MAX_POSITION_ERROR_M = 0.10
MAX_ROTATION_DEG = 3.0


def extrinsic_values(body_T_sensor) -> list[float]:
    """``camera_to_base`` of a EuRoC T_BS: [x, y, z, qx, qy, qz, qw]."""
    return [float(v) for v in (*body_T_sensor[:3, 3], *quaternion_xyzw(body_T_sensor[:3, :3]))]


@pytest.fixture(scope="module")
def posed(env, tmp_path_factory):  # noqa: F811
    """The Vicon poses, a query config with the extrinsic, and maps built with the poses: ``mono``
    (camera model and images) and ``metric`` (with the stereo depth)."""
    root = tmp_path_factory.mktemp("posed")
    vicon = vicon_poses(env["euroc"])
    rows = ["file,stamp,x,y,z,qx,qy,qz,qw"]
    for i in (0, 2):
        stamp, world_T_body = vicon[i]
        rows.append(",".join([f"left_img_{i}.png", f"{stamp / 1e9:.9f}", *map(str, world_T_body[:3, 3]),
                              *map(str, quaternion_xyzw(world_T_body[:3, :3]))]))
    csv = root / "vicon.csv"
    csv.write_text("\n".join(rows) + "\n")
    small = yaml.safe_load(Path(env["common"][3]).read_text())  # the maps' model configuration
    small["verification"] = {"camera_to_base": extrinsic_values(env["sensor"].body_T_sensor)}
    config = root / "with_extrinsic.yaml"
    config.write_text(yaml.safe_dump(small))
    csv_flags = ("--poses", str(csv))
    return {"vicon": vicon, "config": config, "csv": csv,
            "mono": build(env, "posed_mono", *csv_flags),
            "metric": build(env, "posed_metric", *csv_flags, "--depth", str(env["depth"])),
            "no_pose": build(env, "unposed_metric", "--depth", str(env["depth"]))}


def query_map_pose(env, posed, map_dir, capsys):  # noqa: F811
    """query --verify --json with img_1: the img_0 keyframe's record (ranked first)."""
    capsys.readouterr()
    assert main(["query", "--map", str(map_dir), "--checkpoint", env["common"][1], "--config", str(posed["config"]),
                 "--verify", "--intrinsics", env["intrinsics"], "--json", str(env["euroc"] / "left_img_1.png")]) == 0
    best = json.loads(capsys.readouterr().out)["candidates"][0]
    assert best["file"].endswith("left_img_0.png") and best["relative_pose"]["status"] == "ok", best
    return best


def pose_errors(record, truth) -> tuple[float, float, np.ndarray]:
    """(position error m, rotation error deg, [dp, dtheta] in the covariance's convention) of a map_pose record."""
    estimate = pose_matrix(record["position"], record["orientation"])
    rotation = cv2.Rodrigues(truth[:3, :3] @ estimate[:3, :3].T)[0].ravel()
    delta = np.concatenate([truth[:3, 3] - estimate[:3, 3], rotation])
    return float(np.linalg.norm(delta[:3])), float(np.degrees(np.linalg.norm(rotation))), delta


def revisit(env, posed, kind: str, capsys):  # noqa: F811
    """img_1 against the ``kind`` map: (position error, rotation error, [dp, dtheta], covariance) of its
    map_pose, after checking that map_pose and relative_pose agree on being metric."""
    best = query_map_pose(env, posed, posed[kind], capsys)
    record = best["map_pose"]
    assert record["metric"] is best["relative_pose"]["metric"] is (kind == "metric")
    return (*pose_errors(record, posed["vicon"][1][1]), np.reshape(record["covariance"], (6, 6)))


def test_stereo_map_gives_the_revisits_metric_pose_in_the_map(env, posed, capsys):  # noqa: F811
    position, rotation, delta, covariance = revisit(env, posed, "metric", capsys)
    mahalanobis = float(delta @ np.linalg.solve(covariance, delta))
    with capsys.disabled():
        print(f"map pose, stereo map: position error {100 * position:.1f} cm, rotation {rotation:.2f} deg, "
              f"Mahalanobis^2 {mahalanobis:.2f} (std {np.sqrt(np.diag(covariance)[:3]).round(3)} m)")
    assert position < MAX_POSITION_ERROR_M and rotation < MAX_ROTATION_DEG
    assert mahalanobis < CHI2_6DOF_999 and np.all(np.linalg.eigvalsh(covariance) > 0)
    # the keyframe's own pose is far from the query's: the composition moved it
    keyframe, truth = posed["vicon"][0][1], posed["vicon"][1][1]
    assert np.linalg.norm(keyframe[:3, 3] - truth[:3, 3]) > 3 * MAX_POSITION_ERROR_M


def test_monocular_map_gives_the_orientation_and_a_bounded_position(env, posed, capsys):  # noqa: F811
    position, rotation, delta, covariance = revisit(env, posed, "mono", capsys)
    inside = float(delta[:3] @ np.linalg.solve(covariance[:3, :3], delta[:3]))
    with capsys.disabled():
        print(f"map pose, monocular map: rotation {rotation:.2f} deg, position error {100 * position:.1f} cm "
              f"(the keyframe's), Mahalanobis^2 of the position {inside:.3f} (bound: 1-sigma ellipsoid)")
    assert rotation < MAX_ROTATION_DEG
    assert inside <= 1.0  # the true position lies inside the stated 1-sigma ellipsoid of the baseline bound
    assert np.sqrt(covariance[0, 0]) >= 2.0  # verification.monocular_baseline_m: never a metric-looking position


def test_keyframes_without_a_pose_give_no_map_pose(env, posed, capsys):  # noqa: F811
    best = query_map_pose(env, posed, posed["no_pose"], capsys)
    assert best["relative_pose"]["metric"] is True and best["map_pose"] is None


def test_replay_writes_the_same_map_pose(env, posed, tmp_path, capsys):  # noqa: F811
    images = tmp_path / "run"
    images.mkdir()
    (images / "left_img_1.png").write_bytes((env["euroc"] / "left_img_1.png").read_bytes())
    (images / "stamps.csv").write_text(f"file,stamp\nleft_img_1.png,{posed['vicon'][1][0] / 1e9:.9f}\n")
    out = tmp_path / "run.jsonl"
    assert main(["replay", "--images", str(images), "--poses", str(images / "stamps.csv"), "--map", str(posed["metric"]),
                 "--checkpoint", env["common"][1], "--config", str(posed["config"]), "--mode", "localize",
                 "--score-threshold", "0", "--verify", "--intrinsics", env["intrinsics"], "--out", str(out)]) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["loop_closure_match"]["map_id"] == 0 and record["map_pose"]["metric"] is True
    offline = query_map_pose(env, posed, posed["metric"], capsys)["map_pose"]
    assert np.allclose(record["map_pose"]["position"], offline["position"], atol=1e-6)
    assert np.allclose(record["map_pose"]["covariance"], offline["covariance"], rtol=1e-6, atol=1e-12)
