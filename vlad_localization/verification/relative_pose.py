"""Relative pose of a verified pair: the result type and the two estimators.

Frame convention: the pose of the **match** (map keyframe) camera in the **query** camera's frame,
``X_query = R X_match + t``, both optical frames (x right, y down, z forward). Monocular:
``t`` is a unit direction (the scale is unknown, ``metric: false``); with depth: metres.

* :func:`estimate_monocular` - essential matrix with RANSAC (``cv2.findEssentialMat``, five-point)
  on undistorted normalized points, the cheirality check of ``cv2.recoverPose`` (points in front of
  both cameras pick one of the four decompositions). Before that, model selection as in ORB-SLAM
  (Mur-Artal et al., 2015) in its plane + parallax form: a homography is fitted to the matches
  (``homography_threshold_px``); the inliers of ``E`` that it misses by more than
  ``min_parallax_px`` are the parallax that determines ``E``. Fewer than ``min_parallax_fraction`` of
  the ``E`` inliers: the scene is planar (or the motion a pure rotation), ``E`` is not determined
  (any epipole fits a plane and its outliers), and the pair is reported ``planar``. (Comparing H and
  E inlier counts does not work here: the EuRoC revisits have 65-70 % of their matches on the floor.)
* :func:`estimate_metric` - PnP with RANSAC (``cv2.solvePnPRansac``) on the 3-D points of one view
  (depth at its keypoints) and the pixels of the other, refined by Levenberg-Marquardt on the inliers.

Covariance: :mod:`.covariance`. A rejected pair carries its reason in ``status`` (:data:`STATUSES`),
identity pose, no inliers that count and ``covariance[0] = -1`` (the ROS "not estimated" mark).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from vlad_localization.verification import covariance as cov

STATUSES = {
    "ok": "verified: the pose and covariance are valid",
    "no_features": "no patch matches (the candidate was not re-ranked), or refine is sift but a view has "
                   "neither its image nor SIFT features",
    "too_few_matches": "fewer matches than min_inliers (or than the minimal solver needs)",
    "too_few_inliers": "the RANSAC model explains fewer than min_inliers matches",
    "planar": "too few essential-matrix inliers off the dominant homography (planar scene or pure "
              "rotation): the monocular pose is not determined",
    "cheirality": "fewer than min_inliers inliers lie in front of both cameras",
    "too_few_depth": "fewer than min_inliers matches have a valid depth",
    "inconsistent_depth": "PnP explains fewer than min_pnp_inlier_ratio of the matches with depth (wrong depth, "
                          "stereo calibration or scale)",
}
IDENTITY_QUATERNION = (0.0, 0.0, 0.0, 1.0)


def quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a rotation matrix."""
    rvec = cv2.Rodrigues(np.asarray(rotation, np.float64))[0].ravel()
    angle = float(np.linalg.norm(rvec))
    axis = rvec / angle if angle > 0 else np.zeros(3)
    return np.append(axis * np.sin(angle / 2), np.cos(angle / 2))


@dataclass
class RelativePose:
    """Query -> match relative pose (see the module doc for the frame convention)."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    metric: bool = False
    inliers: int = 0
    covariance: np.ndarray = field(default_factory=lambda: np.diag([-1.0, 0, 0, 0, 0, 0]))
    status: str = "ok"
    refine: str | None = None  # the correspondences used (choices.REFINEMENTS): sift | none (patch keypoints)
    match_camera: str | None = None  # against a map keyframe: its own camera model ("map") or the query's ("query")
    map_pose: object = None  # verification.map_pose.MapPose: the robot in the map (prebuilt map keyframes with a pose)

    @classmethod
    def rejected(cls, status: str, metric: bool = False, inliers: int = 0) -> "RelativePose":
        if status not in STATUSES or status == "ok":
            raise ValueError(f"unknown rejection reason {status!r}")
        return cls(metric=metric, inliers=int(inliers), status=status)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def quaternion(self) -> np.ndarray:
        return quaternion_xyzw(self.rotation)

    def to_json(self) -> dict:
        """``{"R": [qx, qy, qz, qw], "t": [x, y, z], "metric", "inliers", "covariance": 36 row-major
        numbers, order [tx, ty, tz, rx, ry, rz], "status": "ok" | reason, "refine": "sift" | "none"
        | null (not reached), "match_camera": "map" | "query" | null (both cameras given)}``."""
        return {
            "R": [float(v) for v in self.quaternion],
            "t": [float(v) for v in self.translation],
            "metric": bool(self.metric),
            "inliers": int(self.inliers),
            "covariance": [float(v) for v in np.asarray(self.covariance).ravel()],
            "status": self.status,
            "refine": self.refine,
            "match_camera": self.match_camera,
        }


def _seed(seed: int | None) -> None:
    if seed is not None:
        cv2.setRNGSeed(int(seed))


def estimate_monocular(query_px: np.ndarray, match_px: np.ndarray, query_camera, match_camera, cfg
                       ) -> RelativePose:
    """Rotation and unit translation from raw-pixel correspondences (M, 2) row by row (``cfg``: a
    VerificationConfig; its pixel thresholds become normalized units through the mean focal length)."""
    count = len(query_px)
    if count < max(5, cfg.min_inliers):
        return RelativePose.rejected("too_few_matches", inliers=count)
    focal = 0.5 * (query_camera.focal + match_camera.focal)
    threshold = cfg.ransac_threshold_px / focal
    q, m = query_camera.normalized(query_px), match_camera.normalized(match_px)
    _seed(cfg.ransac_seed)
    essential, mask = cv2.findEssentialMat(m, q, np.eye(3), cv2.RANSAC, cfg.ransac_confidence, threshold)
    if essential is None or mask is None or int(mask.sum()) < cfg.min_inliers:
        return RelativePose.rejected("too_few_inliers", inliers=0 if mask is None else int(mask.sum()))
    essential = essential[:3]
    if _parallax_inliers(q, m, mask.ravel() > 0, focal, cfg) < cfg.min_parallax_fraction * int(mask.sum()):
        return RelativePose.rejected("planar", inliers=int(mask.sum()))
    good, rotation, translation, pose_mask = cv2.recoverPose(essential, m, q, np.eye(3), mask=mask.copy())
    if good < cfg.min_inliers:
        return RelativePose.rejected("cheirality", inliers=good)
    keep = pose_mask.ravel() > 0
    translation = translation.ravel() / np.linalg.norm(translation)
    scale = 0.5 * (cov.pixel_scale(query_camera, np.asarray(query_px, np.float64))
                   + cov.pixel_scale(match_camera, np.asarray(match_px, np.float64)))
    for _ in range(2):  # refine on the inliers, then re-select them in raw pixels and refine again
        residuals = cov.sampson_residuals(q[keep], m[keep], scale[keep])
        rotation, translation = cov.refine(residuals, rotation, translation, unit=True)
        keep = (np.abs(cov.sampson_residuals(q, m, scale)(rotation, translation)) < cfg.ransac_threshold_px) \
            & _in_front(q, m, rotation, translation)
    good = int(keep.sum())
    if good < cfg.min_inliers:
        return RelativePose.rejected("too_few_inliers", inliers=good)
    residuals = cov.sampson_residuals(q[keep], m[keep], scale[keep])
    sigma = _floored(cov.monocular_covariance(residuals, rotation, translation), cfg)
    return RelativePose(rotation, translation, False, int(good), sigma, "ok")


def _floored(sigma: np.ndarray, cfg) -> np.ndarray:
    return cov.with_floor(sigma, cfg.covariance_floor_translation, np.radians(cfg.covariance_floor_rotation_deg))


def _in_front(q: np.ndarray, m: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(M,) bool: the triangulated point lies in front of both cameras (cheirality)."""
    points = cv2.triangulatePoints(np.eye(3, 4), np.column_stack([rotation, translation]), m.T, q.T)
    points = points[:3] / points[3]
    return (points[2] > 0) & ((rotation @ points + translation[:, None])[2] > 0)


def _parallax_inliers(q: np.ndarray, m: np.ndarray, inliers: np.ndarray, focal: float, cfg) -> int:
    """Essential-matrix inliers that a RANSAC homography (``homography_threshold_px``) misses by more
    than ``min_parallax_px``: the matches off the dominant plane that support ``E``."""
    _seed(cfg.ransac_seed)
    homography, _ = cv2.findHomography(m, q, cv2.RANSAC, cfg.homography_threshold_px / focal,
                                       confidence=cfg.ransac_confidence)
    if homography is None:
        return int(inliers.sum())
    transfer = cv2.perspectiveTransform(m.reshape(-1, 1, 2), homography).reshape(-1, 2)
    return int(((np.linalg.norm(transfer - q, axis=1) * focal > cfg.min_parallax_px) & inliers).sum())


def estimate_metric(points_3d: np.ndarray, pixels: np.ndarray, camera, cfg, points_in_query: bool = False
                    ) -> RelativePose:
    """Metric pose by PnP: ``points_3d`` (M, 3) in the match camera's frame (NaN rows = no depth) seen at
    raw ``pixels`` (M, 2) of the query ``camera``; with ``points_in_query`` the other way round (points
    in the query frame, pixels and camera of the match) and the result inverted."""
    valid = np.all(np.isfinite(points_3d), axis=1) & (points_3d[:, 2] > 0)
    if int(valid.sum()) < max(4, cfg.min_inliers):
        return RelativePose.rejected("too_few_depth", metric=True, inliers=int(valid.sum()))
    objects = np.ascontiguousarray(points_3d[valid], np.float64)
    image_px = np.ascontiguousarray(np.asarray(pixels, np.float64)[valid])
    k_matrix, dist = camera.matrix, camera.dist_coeffs
    _seed(cfg.ransac_seed)
    found, rvec, tvec, inl = cv2.solvePnPRansac(
        objects, image_px, k_matrix, dist, iterationsCount=cfg.pnp_iterations,
        reprojectionError=cfg.pnp_threshold_px, confidence=cfg.ransac_confidence, flags=cv2.SOLVEPNP_AP3P)
    if not found or inl is None or len(inl) < cfg.min_inliers:
        return RelativePose.rejected("too_few_inliers", metric=True, inliers=0 if inl is None else len(inl))
    if len(inl) < cfg.min_pnp_inlier_ratio * len(objects):
        return RelativePose.rejected("inconsistent_depth", metric=True, inliers=len(inl))
    inl = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(objects[inl], image_px[inl], k_matrix, dist, rvec, tvec)
    rotation, translation = cv2.Rodrigues(rvec)[0], tvec.ravel()
    if int(((objects[inl] @ rotation.T + translation)[:, 2] > 0).sum()) < cfg.min_inliers:
        return RelativePose.rejected("cheirality", metric=True, inliers=len(inl))
    residuals = cov.reprojection_residuals(objects[inl], image_px[inl], camera)
    if points_in_query:  # we solved for the query's pose in the match frame: invert it
        rotation, translation = rotation.T, -rotation.T @ translation
        forward = residuals
        residuals = lambda r, t: forward(r.T, -r.T @ t)  # noqa: E731 (residuals in the query->match pose)
    sigma = _floored(cov.metric_covariance(residuals, rotation, translation), cfg)
    return RelativePose(rotation, translation, True, len(inl), sigma, "ok")


def backproject(camera, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """3-D points (M, 3) in the camera's optical frame from raw pixels and depth (z, m; NaN kept)."""
    norm = camera.normalized(pixels)
    return np.column_stack([norm * depth[:, None], depth])
