"""`vlad-localization match`: Patch-NetVLAD similarity of two images (like the official match_two.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import MATCHERS
from .common import add_config_args, add_intrinsics_arg, load_cli_config, path_list

EPILOG = """\
Output: one JSON object
  global_similarity  inner product of the two L2-normalised NetVLAD global descriptors ([-1, 1])
  patch_score        absolute multi-scale patch score in [0, 1] (weighted mean of per_size,
                     weights = matching.patch_weights normalised to sum 1)
  per_size           patch size -> absolute score in [0, 1]
  inliers            patch size -> RANSAC inliers (spatial matcher: mutual nearest neighbours)
  matcher            ransac | spatial
  fused_score        matching.fusion fused (the presets): estimated P(same place) in [0, 1] from the
                     global similarity and both patch scores; null under other fusions
  relative_pose      (with --pose) {"R": [qx, qy, qz, qw], "t": [x, y, z], "metric": bool,
                     "inliers": n, "covariance": 36 numbers, "status": "ok" | reason, "refine":
                     "sift" | "none" (the correspondences used), "match_camera": null}: the pose of
                     the reference camera in the query camera's optical frame (x right, y down,
                     z forward; X_query = R X_ref + t); t is a unit direction unless metric
                     (depth or stereo given); covariance row-major, order [tx ty tz rx ry rz];
                     reasons: no_features, too_few_matches, too_few_inliers, planar, cheirality,
                     too_few_depth, inconsistent_depth

What the score means (absolute, so one pair can be thresholded):
  ransac   fraction of the query's patches that are inliers of one homography between mutually
           nearest patch descriptors (reprojection threshold 24 px for VGG16).
  spatial  the official rapid spatial score divided by its maximum: every query patch mutually
           matched with the same grid offset.
  Both are 1.0 for identical images and near 0 for unrelated places (a few hundredths); revisits
  typically score around 0.1-0.5, depending on model, viewpoint and illumination change.
  Pick a threshold per model and environment: run `match` on a few known revisits and a few
  different places and set it between the two groups (e.g. as loop-closure acceptance).

Relative pose (--pose): SIFT matches inside the matched patch pairs (verification.refine),
then an essential matrix (monocular) or PnP on the depth at the reference's keypoints (metric).
Both images come from one camera: --intrinsics (or verification.intrinsics in the config) are
those of the image files, not of the network input.

Examples:
  vlad-localization match --checkpoint pittsburgh_WPCA512.pth.tar --config performance \\
      --matcher ransac --plot matches.png query.jpg reference.png
  vlad-localization match --checkpoint model.pth.tar --pose \\
      --intrinsics 458.654,457.296,367.215,248.375,-0.2834,0.07396,0.0001936,0.0000176 query.png ref.png
  vlad-localization match --checkpoint model.pth.tar --pose --calibration sensorLeft.yaml,sensorRight.yaml \\
      --stereo-query right_q.png --stereo-ref right_r.png left_q.png left_r.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "match",
        help="score two images by Patch-NetVLAD patch matching (JSON), optionally plot the matches",
        description="Compare two images with Patch-NetVLAD: global similarity and an absolute "
                    "patch-matching score in [0, 1].",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="official-format checkpoint (e.g. pittsburgh_WPCA512.pth.tar or from init-model)")
    add_config_args(p)
    p.add_argument("--matcher", choices=tuple(MATCHERS), default=None,
                   help="patch scorer (default: the config's matching.matcher)")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="write the two images side by side with the matched patches drawn")
    pose = p.add_argument_group("relative pose (geometric verification)")
    pose.add_argument("--pose", action="store_true", help="add relative_pose (query -> reference) to the JSON")
    add_intrinsics_arg(pose, "the image files")
    pose.add_argument("--calibration", type=path_list, metavar="LEFT.yaml[,RIGHT.yaml]",
                      help="EuRoC/Kimera sensor.yaml calibration(s) instead of --intrinsics; with a right "
                           "camera's file, --stereo-* images are rectified with the full stereo calibration")
    depth = pose.add_mutually_exclusive_group()
    depth.add_argument("--depth-query", type=Path, metavar="D.png",
                       help="depth image registered to the query (16-bit: x verification.depth_scale m; float: m)")
    depth.add_argument("--stereo-query", type=Path, metavar="R.png", help="the query's right stereo image")
    depth2 = pose.add_mutually_exclusive_group()
    depth2.add_argument("--depth-ref", type=Path, metavar="D.png", help="depth image registered to the reference")
    depth2.add_argument("--stereo-ref", type=Path, metavar="R.png", help="the reference's right stereo image")
    pose.add_argument("--baseline", type=float, metavar="B",
                      help="stereo baseline in metres, for rectified pairs without a right calibration file")
    p.add_argument("query", type=Path, help="query image")
    p.add_argument("reference", type=Path, help="reference (map) image")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import cv2

    from ..images.io import load_rgb
    from ..matching.matcher import PatchMatcher
    from ..matching.plot import draw_matches
    from ..model.checkpoint import CheckpointError
    from ..model.encoder import Encoder
    from .main import UserError

    pose_flags = ("intrinsics", "calibration", "depth_query", "depth_ref", "stereo_query", "stereo_ref", "baseline")
    if not args.pose and any(getattr(args, flag) is not None for flag in pose_flags):
        raise UserError("--intrinsics, --calibration, --depth-*, --stereo-* and --baseline only apply with --pose")
    cfg = load_cli_config(args)
    try:
        encoder = Encoder.from_checkpoint(args.checkpoint, cfg.model, device=args.device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    query_rgb, ref_rgb = load_rgb(args.query), load_rgb(args.reference)
    if args.pose:
        from .match_pose import pose_views

        views = pose_views(args, cfg, query_rgb, ref_rgb)
    query, ref = encoder.encode([query_rgb]), encoder.encode([ref_rgb])
    if query.grid != ref.grid:
        raise UserError(
            f"the images give different conv grids {query.grid} and {ref.grid}: set model.image_height "
            "and model.image_width in the config so both are resized to one network input size"
        )
    cfg.model = encoder.cfg
    try:
        cfg.validate()
        matcher = PatchMatcher.from_config(cfg, encoder.geometry, query.grid)
        result = matcher.pair(query, ref)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    report = result.record(0)
    if args.pose:
        from ..verification import verify_candidate

        pose = verify_candidate(result, 0, query.image_size, *views, cfg.verification, encoder.geometry.stride)
        report["relative_pose"] = pose.to_json()
    if args.plot is not None:
        picture = draw_matches(query_rgb, ref_rgb, *result.matched_keypoints(0), image_hw=query.image_size)
        if not cv2.imwrite(str(args.plot), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise UserError(f"could not write the plot to {args.plot}: check the folder exists and the suffix "
                            "is an image format (.png, .jpg)")
    print(json.dumps(report))
    return 0
