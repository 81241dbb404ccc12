"""6x6 pose covariance from the inlier residuals (Gauss-Newton), and the Levenberg-Marquardt refinement
of the pose on those residuals (:func:`refine`) that makes the estimate the one it describes.

Order ``[tx, ty, tz, rx, ry, rz]`` as in ``geometry_msgs/PoseWithCovariance``: a perturbation
``(dt, dr)`` moves the pose ``(R, t)`` to ``(exp([dr]x) R, t + dt)``, both in the query camera's
frame (translation in metres, or unit-free for a monocular pose; rotation in radians about the
query frame's fixed axes). With ``J`` the Jacobian of the stacked inlier residuals (pixels) at the
estimate (central differences), ``Sigma = s^2 (J^T J)^-1`` with the residual variance
``s^2 = sum(r^2) / (n_residuals - dof)`` (the reduced chi-square of the fit, floored at
:data:`MIN_SIGMA_PX` squared so a perfect fit does not claim infinite certainty).

Residuals are in raw image pixels, where keypoint noise is homogeneous: metric poses use the
reprojection errors (distortion applied) of the match's 3-D points in the query image; monocular
poses the Sampson distances to the epipolar lines, each scaled from normalized units to raw pixels
by the local magnification of the two keypoints (:func:`pixel_scale`). A monocular pose has 5
degrees of freedom: the Jacobian is taken with ``t`` kept on the unit sphere, the pseudo-inverse is
used, and the unobservable scale direction ``t t^T`` gets :data:`UNKNOWN_SCALE_VARIANCE`.

That covariance describes keypoint noise only (EuRoC revisits: 0.02 deg predicted, 0.2-2.2 deg
measured against Vicon), so :func:`with_floor` adds a configured floor for what it ignores
(calibration, rolling shutter, the ground truth's own error) before a pose graph gets it.
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


def refine(residuals, rotation, translation, unit: bool, iterations: int = 20):
    """Levenberg-Marquardt on the squared residuals from ``(R, t)`` (``unit``: t stays a unit vector),
    so the estimate is the least-squares one that the covariance describes (a RANSAC minimal-sample
    model is not, and is several times noisier)."""
    res = residuals(rotation, translation)
    cost, damping = float(res @ res), 1e-3
    for _ in range(iterations):
        jac = _jacobian(residuals, rotation, translation)
        normal, gradient = jac.T @ jac, jac.T @ res
        while damping < 1e8:
            step = -np.linalg.pinv(normal + damping * np.diag(np.diag(normal)), rcond=1e-10) @ gradient
            new_r, new_t = perturbed(rotation, translation, step)
            if unit:
                new_t = new_t / np.linalg.norm(new_t)
            new_res = residuals(new_r, new_t)
            if float(new_res @ new_res) < cost:
                break
            damping *= 10
        else:
            break
        converged = cost - float(new_res @ new_res) < 1e-9 * cost
        rotation, translation, res, cost = new_r, new_t, new_res, float(new_res @ new_res)
        damping = max(damping / 10, 1e-7)
        if converged:
            break
    return rotation, translation


def _scaled_inverse(jac: np.ndarray, res: np.ndarray, dof: int) -> np.ndarray:
    variance = max(float(res @ res) / max(len(res) - dof, 1), MIN_SIGMA_PX ** 2)
    return variance * np.linalg.pinv(jac.T @ jac, rcond=1e-10)


def reprojection_residuals(points_3d: np.ndarray, pixels: np.ndarray, camera):
    """Residual function ``(R, t) -> (2M,)``: reprojection errors (raw pixels, the camera's distortion
    applied) of ``points_3d`` (match frame) in the query ``camera`` against the query ``pixels``."""
    points_3d = np.ascontiguousarray(points_3d, np.float64)

    def residuals(rotation, translation):
        proj = cv2.projectPoints(points_3d, cv2.Rodrigues(rotation)[0], np.asarray(translation, np.float64),
                                 camera.matrix, camera.dist_coeffs)[0].reshape(-1, 2)
        return (proj - pixels).ravel()

    return residuals


def pixel_scale(camera, pixels: np.ndarray) -> np.ndarray:
    """Raw pixels per normalized unit around each pixel (M,): converts normalized residuals to raw
    pixels, where the keypoint noise is the same everywhere (undistortion stretches it at the edges)."""
    step = np.array([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]])
    norm = camera.normalized((pixels[:, None, :] + step[None]).reshape(-1, 2)).reshape(-1, 4, 2)
    dx = np.linalg.norm(norm[:, 0] - norm[:, 1], axis=1)
    dy = np.linalg.norm(norm[:, 2] - norm[:, 3], axis=1)
    return 2.0 / (dx + dy)


def sampson_residuals(query_norm: np.ndarray, match_norm: np.ndarray, scale: np.ndarray):
    """Residual function ``(R, t) -> (M,)``: Sampson distances of normalized correspondences to the
    epipolar geometry ``E = [t/|t|]x R`` (``x_q^T E x_m = 0``), times ``scale`` (M,) (raw pixels per
    normalized unit, e.g. the mean :func:`pixel_scale` of the two keypoints)."""
    xq = np.column_stack([query_norm, np.ones(len(query_norm))])
    xm = np.column_stack([match_norm, np.ones(len(match_norm))])

    def residuals(rotation, translation):
        t = translation / np.linalg.norm(translation)
        essential = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ rotation
        ex_m = xm @ essential.T
        etx_q = xq @ essential
        num = np.einsum("ij,ij->i", xq, ex_m)
        den = np.sqrt(ex_m[:, 0] ** 2 + ex_m[:, 1] ** 2 + etx_q[:, 0] ** 2 + etx_q[:, 1] ** 2)
        return scale * num / np.maximum(den, 1e-12)

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


def with_floor(sigma: np.ndarray, translation_std: float, rotation_std_rad: float) -> np.ndarray:
    """``sigma`` plus independent floor variances on the three translation and three rotation axes."""
    return sigma + np.diag([translation_std ** 2] * 3 + [rotation_std_rad ** 2] * 3)
