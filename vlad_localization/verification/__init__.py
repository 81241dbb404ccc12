"""Geometric verification of loop-closure candidates with a relative pose.

From the mutual patch matches of the re-ranking (optionally refined to SIFT matches inside the
matched patches), the query -> match relative pose: essential matrix (monocular, unit translation)
or PnP (metric depth from a registered depth image or a stereo pair), with a 6x6 covariance, the
inlier count and a status. ``verify_candidate`` is the entry point; ``RelativePose.to_json`` the output.
Against a prebuilt map keyframe with a pose, :func:`map_pose_of` gives the robot's pose in the map.
"""
from vlad_localization.verification.camera import CalibratedSensor, PinholeCamera, load_euroc_sensor
from vlad_localization.verification.depth import StereoRig, depth_at, depth_lookup, stereo_depth_at
from vlad_localization.verification.map_pose import MapPose, map_pose_of
from vlad_localization.verification.relative_pose import STATUSES, RelativePose
from vlad_localization.verification.verifier import View, estimate_pose, verify_candidate, verify_correspondences

__all__ = [
    "CalibratedSensor", "MapPose", "PinholeCamera", "RelativePose", "STATUSES", "StereoRig", "View", "depth_at",
    "depth_lookup", "estimate_pose", "load_euroc_sensor", "map_pose_of", "stereo_depth_at", "verify_candidate",
    "verify_correspondences",
]
