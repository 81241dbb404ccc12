"""6x6 pose covariance from the inlier residuals (Gauss-Newton).

Order ``[tx, ty, tz, rx, ry, rz]`` as in ``geometry_msgs/PoseWithCovariance``: a perturbation
``(dt, dr)`` moves the pose ``(R, t)`` to ``(exp([dr]x) R, t + dt)``, both in the query camera's
frame (translation in metres, or unit-free for a monocular pose; rotation in radians about the
query frame's fixed axes). With ``J`` the Jacobian of the stacked inlier residuals (pixels) at the
estimate (central differences), ``Sigma = s^2 (J^T J)^-1`` with the residual variance
``s^2 = sum(r^2) / (n_residuals - dof)`` (the reduced chi-square of the fit, floored at
:data:`MIN_SIGMA_PX` squared so a perfect fit does not claim infinite certainty).

Residuals: metric poses use the reprojection errors of the match's 3-D points in the query image;
monocular poses the Sampson distances to the epipolar lines (in pixels). A monocular pose has 5
degrees of freedom: the Jacobian is taken with ``t`` kept on the unit sphere, the pseudo-inverse is
used, and the unobservable scale direction ``t t^T`` gets :data:`UNKNOWN_SCALE_VARIANCE`.
"""
from __future__ import annotations

import cv2
import numpy as np

MIN_SIGMA_PX = 0.1
UNKNOWN_SCALE_VARIANCE = 1e6  # monocular: variance along the translation direction (scale unknown)
STEP = 1e-6


def perturbed(rotation: np.ndarray, translation: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(exp([dr]x) R, t + dt)`` for ``delta = [dt, dr]``."""
    return cv2.Rodrigues(np.asarray(delta[3:], np.float64))[0] @ rotation, translation + delta[:3]


def _jacobian(residuals, rotation, translation) -> np.ndarray:
    columns = []
    for i in range(6):
        step = np.zeros(6)
        step[i] = STEP
        columns.append((residuals(*perturbed(rotation, translation, step))
                        - residuals(*perturbed(rotation, translation, -step))) / (2 * STEP))
    return np.column_stack(columns)


def _scaled_inverse(jac: np.ndarray, res: np.ndarray, dof: int) -> np.ndarray:
    variance = max(float(res @ res) / max(len(res) - dof, 1), MIN_SIGMA_PX ** 2)
    return variance * np.linalg.pinv(jac.T @ jac, rcond=1e-10)


def reprojection_residuals(points_3d: np.ndarray, pixels: np.ndarray, camera):
    """Residual function ``(R, t) -> (2M,)``: reprojection errors (px) of ``points_3d`` (match frame)
    in the query ``camera`` (undistorted, pinhole) against the undistorted query ``pixels``."""
    target = camera.normalized(pixels)

    def residuals(rotation, translation):
        cam = points_3d @ rotation.T + translation
        proj = cam[:, :2] / cam[:, 2:3]
        return ((proj - target) * [camera.fx, camera.fy]).ravel()

    return residuals


def sampson_residuals(query_norm: np.ndarray, match_norm: np.ndarray, focal: float):
    """Residual function ``(R, t) -> (M,)``: Sampson distances (px) of normalized correspondences to
    the epipolar geometry ``E = [t/|t|]x R`` (``x_q^T E x_m = 0``)."""
    xq = np.column_stack([query_norm, np.ones(len(query_norm))])
    xm = np.column_stack([match_norm, np.ones(len(match_norm))])

    def residuals(rotation, translation):
        t = translation / np.linalg.norm(translation)
        essential = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ rotation
        ex_m = xm @ essential.T
        etx_q = xq @ essential
        num = np.einsum("ij,ij->i", xq, ex_m)
        den = np.sqrt(ex_m[:, 0] ** 2 + ex_m[:, 1] ** 2 + etx_q[:, 0] ** 2 + etx_q[:, 1] ** 2)
        return focal * num / np.maximum(den, 1e-12)

    return residuals


def metric_covariance(residuals, rotation, translation) -> np.ndarray:
    """6x6 covariance of a metric pose (6 degrees of freedom)."""
    return _scaled_inverse(_jacobian(residuals, rotation, translation), residuals(rotation, translation), 6)


def monocular_covariance(residuals, rotation, translation) -> np.ndarray:
    """6x6 covariance of a pose with unit translation (5 degrees of freedom + unknown scale)."""
    unit = translation / np.linalg.norm(translation)
    cov = _scaled_inverse(_jacobian(residuals, rotation, unit), residuals(rotation, unit), 5)
    cov[:3, :3] += UNKNOWN_SCALE_VARIANCE * np.outer(unit, unit)
    return cov
