"""`vlad-localization match`: Patch-NetVLAD similarity of two images (like the official match_two.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import MATCHERS
from .common import add_config_args, load_cli_config

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

What the score means (absolute, so one pair can be thresholded):
  ransac   fraction of the query's patches that are inliers of one homography between mutually
           nearest patch descriptors (reprojection threshold 24 px for VGG16).
  spatial  the official rapid spatial score divided by its maximum: every query patch mutually
           matched with the same grid offset.
  Both are 1.0 for identical images and near 0 for unrelated places (a few hundredths); revisits
  typically score around 0.1-0.5, depending on model, viewpoint and illumination change.
  Pick a threshold per model and environment: run `match` on a few known revisits and a few
  different places and set it between the two groups (e.g. as loop-closure acceptance).

Example:
  vlad-localization match --checkpoint pittsburgh_WPCA512.pth.tar --config performance \\
      --matcher ransac --plot matches.png query.jpg reference.png
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

    cfg = load_cli_config(args)
    try:
        encoder = Encoder.from_checkpoint(args.checkpoint, cfg.model, device=args.device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    query_rgb, ref_rgb = load_rgb(args.query), load_rgb(args.reference)
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
    sizes = [str(p) for p in result.patch_sizes]
    report = {
        "global_similarity": float((query.global_desc[0].float() * ref.global_desc[0].float()).sum()),
        "patch_score": float(result.fused[0]),
        "per_size": dict(zip(sizes, map(float, result.per_size[0]))),
        "inliers": dict(zip(sizes, map(int, result.inliers[0]))),
        "matcher": result.matcher,
        "fused_score": None if result.probability is None else float(result.probability[0]),
    }
    if args.plot is not None:
        picture = draw_matches(query_rgb, ref_rgb, *result.matched_keypoints(0), image_hw=query.image_size)
        if not cv2.imwrite(str(args.plot), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise UserError(f"could not write the plot to {args.plot}: check the folder exists and the suffix "
                            "is an image format (.png, .jpg)")
    print(json.dumps(report))
    return 0
