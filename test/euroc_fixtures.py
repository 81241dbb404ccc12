"""Fixtures and helpers of the EuRoC V1_01 tests (registered by conftest's ``pytest_plugins``): the
revisit img_1 -> img_0 (98 s apart) as a run, maps of the left images built with the camera model,
stereo depth and Vicon poses, and the Vicon ground truth the verified poses are checked against."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import yaml

from vlad_localization.images.io import load_rgb
from vlad_localization.verification import StereoRig, load_euroc_sensor
from vlad_localization.verification.depth import stereo_depth_image
from vlad_localization.verification.relative_pose import quaternion_xyzw

MAP_IMAGES = (0, 2)  # img_0 (the revisited place) and img_2 (another corner of the room)
CHI2_6DOF_999 = 22.46  # 99.9 % quantile of chi-square with 6 degrees of freedom


# -- the Vicon ground truth --------------------------------------------------------------------------
def vicon_poses(euroc) -> dict[int, tuple[int, np.ndarray]]:
    """{image index: (EuRoC stamp ns, world_T_body 4x4)} of gt_poses_from_test.txt (w x y z quaternion order)."""
    poses = {}
    for line in (euroc / "gt_poses_from_test.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split()
        qw, qx, qy, qz, x, y, z = map(float, fields[3:10])
        norm = np.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        world_T_body = np.eye(4)
        world_T_body[:3, :3] = rotation_matrix((qx / norm, qy / norm, qz / norm, qw / norm))
        world_T_body[:3, 3] = x, y, z
        poses[int(fields[0][-1])] = (int(fields[2]), world_T_body)
    return poses


def ground_truth(euroc, query: int, match: int) -> np.ndarray:
    """T_query_match (4x4) of the left cameras: world_T_body (:func:`vicon_poses`) times body_T_camera
    (T_BS of sensorLeft.yaml)."""
    body_T_cam = load_euroc_sensor(euroc / "sensorLeft.yaml").body_T_sensor
    poses = {i: world_T_body @ body_T_cam for i, (_, world_T_body) in vicon_poses(euroc).items()}
    return np.linalg.inv(poses[query]) @ poses[match]


def errors(pose, truth):
    """(rotation error deg, translation direction error deg, |t| / |t_gt|)."""
    rotation = np.degrees(np.linalg.norm(cv2.Rodrigues(pose.rotation.T @ truth[:3, :3])[0]))
    t, t_gt = pose.translation, truth[:3, 3]
    direction = np.degrees(np.arccos(np.clip(t @ t_gt / np.linalg.norm(t) / np.linalg.norm(t_gt), -1, 1)))
    return float(rotation), float(direction), float(np.linalg.norm(t) / np.linalg.norm(t_gt))


def rotation_matrix(q) -> np.ndarray:
    """The rotation of a unit quaternion [x, y, z, w]."""
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def extrinsic_values(body_T_sensor) -> list[float]:
    """``camera_to_base`` of a EuRoC T_BS: [x, y, z, qx, qy, qz, qw]."""
    return [float(v) for v in (*body_T_sensor[:3, 3], *quaternion_xyzw(body_T_sensor[:3, :3]))]


def pose_errors(record, truth) -> tuple[float, float, np.ndarray]:
    """(position error m, rotation error deg, [dp, dtheta] in the covariance's convention) of a map_pose record."""
    from vlad_localization.verification.map_pose import pose_matrix

    estimate = pose_matrix(record["position"], record["orientation"])
    rotation = cv2.Rodrigues(truth[:3, :3] @ estimate[:3, :3].T)[0].ravel()
    delta = np.concatenate([truth[:3, 3] - estimate[:3, 3], rotation])
    return float(np.linalg.norm(delta[:3])), float(np.degrees(np.linalg.norm(rotation))), delta


# -- the revisit as a run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def euroc_run(datasets_dir):
    """(frames in time order [(stamp_ns, index, rgb)], left camera calibration, EuRoC folder)."""
    euroc = datasets_dir / "euroc_loop_pairs"
    stamps = {}
    for line in (euroc / "gt_poses_from_test.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            stamps[int(fields[0][-1])] = int(fields[2])
    frames = [(stamps[i], i, load_rgb(euroc / f"left_img_{i}.png")) for i in (1, 0)]  # img_1 first
    return frames, load_euroc_sensor(euroc / "sensorLeft.yaml"), euroc


# -- maps of the left images -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def euroc_env(tmp_path_factory, datasets_dir, speed_checkpoint, speed_config_file):
    """Map images, their stereo depth (16-bit PNG, mm) and the CLI's common flags."""
    root = tmp_path_factory.mktemp("views")
    euroc = datasets_dir / "euroc_loop_pairs"
    left, right = load_euroc_sensor(euroc / "sensorLeft.yaml"), load_euroc_sensor(euroc / "sensorRight.yaml")
    rig = StereoRig.from_sensors(left, right)
    images, depth = root / "left", root / "depth"
    images.mkdir()
    depth.mkdir()
    for i in MAP_IMAGES:
        shutil.copy(euroc / f"left_img_{i}.png", images)
        metres = stereo_depth_image(load_rgb(euroc / f"left_img_{i}.png"), load_rgb(euroc / f"right_img_{i}.png"),
                                    rig, 20.0)
        cv2.imwrite(str(depth / f"left_img_{i}.png"), np.where(np.isfinite(metres), metres * 1000, 0).astype(np.uint16))
    cam = left.camera
    intrinsics = ",".join(str(v) for v in (cam.fx, cam.fy, cam.cx, cam.cy, *cam.distortion[:4]))
    return {"root": root, "euroc": euroc, "images": images, "depth": depth, "sensor": left, "intrinsics": intrinsics,
            "common": ["--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file)]}


def build_euroc_map(euroc_env, name, *flags):
    """``build-map`` of the map images with the camera model (and ``flags``) into ``root/name``."""
    from vlad_localization.cli.main import main

    out = euroc_env["root"] / name
    assert main(["build-map", *euroc_env["common"], "--images", str(euroc_env["images"]), "--intrinsics",
                 euroc_env["intrinsics"], "--out", str(out), "--no-progress", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def posed_maps(euroc_env, speed_config_file, tmp_path_factory):
    """The Vicon poses, a query config with the extrinsic, and maps built with the poses: ``mono``
    (camera model and images) and ``metric`` (with the stereo depth); ``no_pose``: the metric map
    without the poses."""
    root = tmp_path_factory.mktemp("posed")
    vicon = vicon_poses(euroc_env["euroc"])
    rows = ["file,stamp,x,y,z,qx,qy,qz,qw"]
    for i in MAP_IMAGES:
        stamp, world_T_body = vicon[i]
        rows.append(",".join([f"left_img_{i}.png", f"{stamp / 1e9:.9f}", *map(str, world_T_body[:3, 3]),
                              *map(str, quaternion_xyzw(world_T_body[:3, :3]))]))
    csv = root / "vicon.csv"
    csv.write_text("\n".join(rows) + "\n")
    small = yaml.safe_load(speed_config_file.read_text())  # the maps' model configuration
    small["verification"] = {"camera_to_base": extrinsic_values(euroc_env["sensor"].body_T_sensor)}
    config = root / "with_extrinsic.yaml"
    config.write_text(yaml.safe_dump(small))
    csv_flags = ("--poses", str(csv))
    return {"vicon": vicon, "config": config, "csv": csv,
            "mono": build_euroc_map(euroc_env, "posed_mono", *csv_flags),
            "metric": build_euroc_map(euroc_env, "posed_metric", *csv_flags, "--depth", str(euroc_env["depth"])),
            "no_pose": build_euroc_map(euroc_env, "unposed_metric", "--depth", str(euroc_env["depth"]))}
