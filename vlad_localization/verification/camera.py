"""The pinhole camera with radial-tangential (plumb bob) distortion, as in ``sensor_msgs/CameraInfo``
(``D = [k1, k2, p1, p2]``) and the EuRoC / Kalibr ``sensor.yaml`` files.

Pixels are raw (distorted) image pixels; ``normalized`` points are undistorted ray directions
``(x / z, y / z)`` in the camera's optical frame (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics ``fx, fy, cx, cy`` (pixels) and distortion ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])``
    (OpenCV's order, as ``CameraInfo.d`` of plumb_bob / rational_polynomial) of one camera."""

    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_list(cls, values) -> "PinholeCamera":
        """``[fx, fy, cx, cy]`` or ``[fx, fy, cx, cy, k1, k2, p1, p2]`` (the config / CLI form)."""
        values = [float(v) for v in values]
        if len(values) not in (4, 8):
            raise ValueError(
                f"intrinsics need 4 numbers fx,fy,cx,cy or 8 with k1,k2,p1,p2 distortion, got {len(values)}"
            )
        if not all(np.isfinite(values)) or values[0] <= 0 or values[1] <= 0:
            raise ValueError(f"intrinsics {values}: fx and fy must be positive and every value finite")
        return cls(*values[:4], tuple(values[4:]) or (0.0, 0.0, 0.0, 0.0))

    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_coeffs(self) -> np.ndarray:
        return np.asarray(self.distortion, dtype=np.float64)

    @property
    def focal(self) -> float:
        """Mean focal length: converts thresholds and residuals between pixels and normalized units."""
        return 0.5 * (self.fx + self.fy)

    def normalized(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels (M, 2) -> undistorted normalized coordinates (M, 2)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if not len(pixels):
            return np.zeros((0, 2))
        return cv2.undistortPoints(pixels, self.matrix, self.dist_coeffs).reshape(-1, 2)

    def scaled(self, sx: float, sy: float) -> "PinholeCamera":
        """The same camera for an image resized by ``sx`` horizontally and ``sy`` vertically."""
        return PinholeCamera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, self.distortion)

    def resized(self, from_hw, to_hw) -> "PinholeCamera":
        """The camera of an image of size ``from_hw`` (H, W) for that image resized to ``to_hw``."""
        if tuple(from_hw) == tuple(to_hw):
            return self
        return self.scaled(to_hw[1] / from_hw[1], to_hw[0] / from_hw[0])


DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "")  # what OpenCV's pinhole model reads


def camera_from_info(msg) -> tuple[PinholeCamera, tuple[int, int]]:
    """A ``sensor_msgs/CameraInfo`` (rclpy's or a bag's, read with ``rosbags``) -> (camera, (H, W)) of
    the raw image: ``K`` and ``D`` (plumb_bob: k1, k2, p1, p2, k3; rational_polynomial: 8
    coefficients). Fisheye (``equidistant``) and unknown models are refused with a ValueError."""
    if msg.distortion_model not in DISTORTION_MODELS:
        raise ValueError(f"CameraInfo distortion_model {msg.distortion_model!r} is not supported: use "
                         "plumb_bob or rational_polynomial (or rectified images with no distortion)")
    k = np.asarray(msg.k, np.float64).reshape(3, 3)
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError("CameraInfo has no intrinsics (K is zero): the camera is not calibrated")
    dist = tuple(float(v) for v in msg.d) or (0.0, 0.0, 0.0, 0.0)
    if len(dist) not in (4, 5, 8):
        raise ValueError(f"CameraInfo has {len(dist)} distortion coefficients, expected 4, 5 or 8")
    return PinholeCamera(*(float(v) for v in (k[0, 0], k[1, 1], k[0, 2], k[1, 2])), dist), \
        (int(msg.height), int(msg.width))


@dataclass(frozen=True)
class CalibratedSensor:
    """A camera with its extrinsics ``T_BS`` (4x4: sensor -> body frame) and image size (H, W)."""

    camera: PinholeCamera
    body_T_sensor: np.ndarray
    image_hw: tuple[int, int]


def load_euroc_sensor(path: str | Path) -> CalibratedSensor:
    """A EuRoC / Kimera ``sensor.yaml`` (``intrinsics``, ``distortion_coefficients``, ``T_BS``,
    ``resolution: [W, H]``, radial-tangential pinhole only)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text.replace("%YAML:1.0", "", 1))
        if data.get("camera_model", "pinhole") != "pinhole" or \
                data.get("distortion_model", "radial-tangential") not in ("radial-tangential", "radtan", "plumb_bob"):
            raise ValueError("only a pinhole camera with radial-tangential distortion is supported")
        camera = PinholeCamera.from_list(list(data["intrinsics"]) + list(data.get("distortion_coefficients", [0] * 4)))
        body_T_sensor = np.asarray(data["T_BS"]["data"], dtype=np.float64).reshape(4, 4)
        width, height = (int(v) for v in data["resolution"])
    except OSError as exc:
        raise ValueError(f"calibration {path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"calibration {path} is not a EuRoC sensor.yaml: {exc}") from exc
    return CalibratedSensor(camera, body_T_sensor, (height, width))
