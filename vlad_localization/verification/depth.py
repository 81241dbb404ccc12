"""Metric depth at keypoints: from a registered depth image, or from a stereo pair.

Depth is the z coordinate (metres) in the left / colour camera's optical frame at a raw pixel of
that camera's image; NaN where unknown. Stereo: both images are undistorted and rectified with the
calibration (``cv2.stereoRectify``), disparity by semi-global block matching (``cv2.StereoSGBM``),
``z = f * baseline / disparity`` in the rectified frame, rotated back to the left camera.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vlad_localization.verification.camera import CalibratedSensor, PinholeCamera
from vlad_localization.verification.refine import gray

WINDOW = 2  # depth/disparity is the median of the valid values in a (2 * WINDOW + 1)^2 window


def _window_median(image: np.ndarray, points: np.ndarray, valid) -> np.ndarray:
    """Median of the valid values of ``image`` around each (x, y) point; NaN when none or outside."""
    height, width = image.shape[:2]
    out = np.full(len(points), np.nan)
    for i, (x, y) in enumerate(np.rint(points).astype(np.int64)):
        if not (0 <= x < width and 0 <= y < height):
            continue
        patch = image[max(y - WINDOW, 0):y + WINDOW + 1, max(x - WINDOW, 0):x + WINDOW + 1].astype(np.float64)
        patch = patch[valid(patch)]
        if patch.size:
            out[i] = float(np.median(patch))
    return out


def depth_at(depth_image: np.ndarray, points: np.ndarray, depth_scale: float, max_depth_m: float) -> np.ndarray:
    """Depth (m) at raw pixels ``points`` (M, 2) of a depth image registered to the camera image.

    Integer images (16UC1, millimetres in ROS) are multiplied by ``depth_scale``; float images
    (32FC1) are metres already. Zero, non-finite and beyond ``max_depth_m`` values are unknown."""
    if depth_image.ndim != 2:
        raise ValueError(f"a depth image has one channel, got shape {depth_image.shape}")
    scale = 1.0 if np.issubdtype(depth_image.dtype, np.floating) else float(depth_scale)
    depth = _window_median(depth_image, points, lambda v: np.isfinite(v) & (v > 0))
    depth = depth * scale
    depth[~(depth <= max_depth_m)] = np.nan
    return depth


def depth_lookup(keypoints: np.ndarray, depths: np.ndarray, tolerance_px: float = 0.5):
    """A depth function (``DepthFn``) from depths stored at known keypoints (e.g. a map keyframe's SIFT keypoints):
    each queried pixel gets the depth of the stored keypoint within ``tolerance_px``, else NaN."""
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    depths = np.asarray(depths, np.float64).ravel()

    def depth(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        out = np.full(len(points), np.nan)
        if len(keypoints) and len(points):
            dist = np.linalg.norm(points[:, None, :] - keypoints[None, :, :], axis=2)
            nearest = np.argmin(dist, axis=1)
            close = dist[np.arange(len(points)), nearest] <= tolerance_px
            out[close] = depths[nearest[close]]
        return out

    return depth


@dataclass(frozen=True)
class StereoRig:
    """Left and right cameras and the right camera's pose: ``X_right = R X_left + t``."""

    left: PinholeCamera
    right: PinholeCamera
    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def from_baseline(cls, camera: PinholeCamera, baseline_m: float) -> "StereoRig":
        """Two identical, parallel cameras, the right one ``baseline_m`` to the right (x) of the left."""
        if not baseline_m > 0:
            raise ValueError(f"the stereo baseline must be a positive distance in metres, got {baseline_m}")
        return cls(camera, camera, np.eye(3), np.array([-float(baseline_m), 0.0, 0.0]))

    @classmethod
    def from_sensors(cls, left: CalibratedSensor, right: CalibratedSensor) -> "StereoRig":
        """From two calibrated sensors of one body (EuRoC ``sensorLeft.yaml`` / ``sensorRight.yaml``)."""
        right_T_left = np.linalg.inv(right.body_T_sensor) @ left.body_T_sensor
        return cls(left.camera, right.camera, right_T_left[:3, :3], right_T_left[:3, 3])

    @classmethod
    def from_camera_info(cls, left, right) -> "StereoRig":
        """From a calibrated stereo pair's two ``sensor_msgs/CameraInfo`` (rclpy's or a bag's): ``K``
        and ``D`` of each raw image, ``R`` each camera's rectification rotation and the right
        projection ``P`` with ``P[0, 3] = Tx = -fx' * baseline`` (ROS's convention; the right camera
        is ``baseline`` along the rectified x axis): ``X_right = R_r^T (R_l X_left - [B, 0, 0])``."""
        from vlad_localization.verification.camera import camera_from_info

        p = np.asarray(right.p, np.float64).reshape(3, 4)
        baseline = -p[0, 3] / p[0, 0] if p[0, 0] > 0 else 0.0
        if not baseline > 0:
            raise ValueError(f"the right CameraInfo's P has Tx = {p[0, 3]!r}: expected -fx * baseline < 0 "
                             "(a calibrated stereo pair's right camera)")
        r_left, r_right = (np.asarray(m.r, np.float64).reshape(3, 3) for m in (left, right))
        if not all(np.allclose(r @ r.T, np.eye(3), atol=1e-4) for r in (r_left, r_right)):
            raise ValueError("a CameraInfo's R is not a rotation (an uncalibrated stereo pair: R all zero?)")
        return cls(camera_from_info(left)[0], camera_from_info(right)[0], r_right.T @ r_left,
                   r_right.T @ np.array([-baseline, 0.0, 0.0]))

    def scaled(self, sx: float, sy: float) -> "StereoRig":
        return StereoRig(self.left.scaled(sx, sy), self.right.scaled(sx, sy), self.rotation, self.translation)


def _rectified_disparity(left: np.ndarray, right: np.ndarray, rig: StereoRig, num_disparities: int):
    """SGBM disparity (float32, pixels; <= 0 unknown) of the rectified pair and the rectification
    (R_left, P_left, P_right) of ``cv2.stereoRectify``."""
    if left.shape[:2] != right.shape[:2]:
        raise ValueError(f"stereo images differ in size: {left.shape[:2]} and {right.shape[:2]}")
    left, right = gray(left), gray(right)
    height, width = left.shape
    r_left, r_right, p_left, p_right, *_ = cv2.stereoRectify(
        rig.left.matrix, rig.left.dist_coeffs, rig.right.matrix, rig.right.dist_coeffs, (width, height),
        np.asarray(rig.rotation, np.float64), np.asarray(rig.translation, np.float64).reshape(3, 1), alpha=0)
    rectified = []
    for image, cam, rot, proj in ((left, rig.left, r_left, p_left), (right, rig.right, r_right, p_right)):
        maps = cv2.initUndistortRectifyMap(cam.matrix, cam.dist_coeffs, rot, proj, (width, height), cv2.CV_32FC1)
        rectified.append(cv2.remap(image, *maps, cv2.INTER_LINEAR))
    block = 5
    sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=num_disparities, blockSize=block,
                                 P1=8 * block * block, P2=32 * block * block, uniquenessRatio=10,
                                 disp12MaxDiff=1, speckleWindowSize=100, speckleRange=2,
                                 mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    disparity = sgbm.compute(*rectified).astype(np.float32) / 16.0  # fixed point, 4 fractional bits
    return disparity, r_left, p_left, p_right


def _left_depth(rect: np.ndarray, disp: np.ndarray, r_left, p_left, p_right, max_depth_m: float) -> np.ndarray:
    """Depth (m, left optical frame) of rectified points (M, 2) with disparities (M,) (NaN unknown)."""
    focal, baseline = p_left[0, 0], abs(p_right[0, 3] / p_right[0, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        z_rect = focal * baseline / disp
    rays = np.column_stack([(rect[:, 0] - p_left[0, 2]) / focal, (rect[:, 1] - p_left[1, 2]) / p_left[1, 1],
                            np.ones(len(rect))])
    z_left = (rays * z_rect[:, None]) @ r_left  # rows: R_rect^T X_rect, back to the left camera
    depth = z_left[:, 2]
    depth[~(depth <= max_depth_m)] = np.nan
    return depth


def stereo_depth_at(left: np.ndarray, right: np.ndarray, rig: StereoRig, points: np.ndarray,
                    max_depth_m: float, num_disparities: int = 128) -> np.ndarray:
    """Depth (m, left optical frame) at raw left pixels ``points`` (M, 2) from a stereo pair
    (greyscale or RGB uint8 images of one size)."""
    disparity, r_left, p_left, p_right = _rectified_disparity(left, right, rig, num_disparities)
    rect = cv2.undistortPoints(np.asarray(points, np.float64).reshape(-1, 1, 2), rig.left.matrix,
                               rig.left.dist_coeffs, R=r_left, P=p_left).reshape(-1, 2)
    disp = _window_median(disparity, rect, lambda v: v > 0.5)
    return _left_depth(rect, disp, r_left, p_left, p_right, max_depth_m)


def stereo_depth_image(left: np.ndarray, right: np.ndarray, rig: StereoRig, max_depth_m: float,
                       num_disparities: int = 128) -> np.ndarray:
    """A depth image (float32 metres, NaN unknown) registered to the raw left image, from a stereo
    pair: every left pixel's disparity at its rectified position (nearest), as :func:`stereo_depth_at`
    but dense (e.g. to store as a map keyframe's depth)."""
    disparity, r_left, p_left, p_right = _rectified_disparity(left, right, rig, num_disparities)
    height, width = disparity.shape
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).reshape(-1, 1, 2).astype(np.float64)
    rect = cv2.undistortPoints(grid, rig.left.matrix, rig.left.dist_coeffs, R=r_left, P=p_left).reshape(-1, 2)
    cols, rows = np.rint(rect[:, 0]).astype(np.int64), np.rint(rect[:, 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    disp = np.full(len(rect), np.nan)
    disp[inside] = disparity[rows[inside], cols[inside]]
    disp[~(disp > 0.5)] = np.nan
    return _left_depth(rect, disp, r_left, p_left, p_right, max_depth_m).reshape(height, width).astype(np.float32)


def load_depth(path) -> np.ndarray:
    """A depth image file (16-bit PNG in sensor units, or a float TIFF/EXR in metres) as one channel."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise FileNotFoundError(f"depth image {path} does not exist")
    depth = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if depth is None or depth.ndim != 2:
        raise ValueError(f"depth image {path} is not a one-channel image (expected 16-bit PNG or float TIFF)")
    return depth
