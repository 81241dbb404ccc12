"""`vlad-localization query`: rank map keyframes for query images (``--json`` fields in EPILOG)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from vlad_localization.cli.common import add_config_args, add_intrinsics_arg, load_cli_config, positive_int

EPILOG = """\
--json prints one object per query image and line (the candidate fields of `replay`):
  {"query": "<path>", "candidates": [{"map_id": 3, "map_stamp": 12.5, "global_similarity": 0.91,
    "patch_score": 0.42, "inliers": 57, "source": 0, "fused_score": 0.97, "file": "..."}, ...]}
  query                the query image path
  candidates           map keyframes in final rank order, each with
    map_id             keyframe id in the map (see map-info)
    map_stamp          keyframe stamp in seconds (null without a stamp)
    global_similarity  inner product of the NetVLAD global descriptors ([-1, 1])
    patch_score        absolute patch score in [0, 1] (null if not re-ranked)
    inliers            patch matches supporting it, at the best patch size
    source             0: the prebuilt map (always, for query)
    fused_score        estimated probability of the same place in [0, 1] (null if not computed)
    file               the keyframe's image file, or bag:topic
    sequence_similarity  null for query (sequence scoring needs a run: replay --sequence-length)
    relative_pose      with --verify, each re-ranked candidate's pose in the query camera's frame
                       (match --help: R, t, metric, inliers, covariance, status), with refine
                       (sift: SIFT matches in the keyframe's stored image; none: the patch keypoints
                       alone, the map stores no image) and match_camera (map: the keyframe's stored
                       camera model; query: none stored, the query's assumed); t is metric when the
                       map stores the keyframe's depth (build-map --depth)
    map_pose           with --verify, the robot's pose in the map from a verified candidate whose
                       keyframe has a pose (else null): position [x, y, z] (m), orientation
                       [qx, qy, qz, qw], covariance (36, x y z and rotation about X Y Z, in the
                       map frame), metric (false: monocular, the keyframe's position with the
                       verification.monocular_baseline_m bound); the base frame of the map's poses,
                       through verification.camera_to_base (docs/verification.md, the robot's pose in the map)

Example:
  vlad-localization query --map maps/run1 --checkpoint model.pth.tar --config speed \\
      --top-k 5 --json query.png more_queries/
"""


def add_parser(sub) -> None:
    p = sub.add_parser("query", help="rank map keyframes for query images",
                       description="Rank map keyframes for query images: global NetVLAD search, then\n"
                                   "patch re-ranking of the best candidates.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", required=True, help="map directory")
    p.add_argument("--checkpoint", required=True, help="the checkpoint the map was built with")
    add_config_args(p)
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="candidates per query (default: the config's localizer.top_k)")
    p.add_argument("--no-rerank", action="store_true", help="global similarity only, no patch re-ranking")
    p.add_argument("--json", action="store_true", help="one JSON object per query image and line (fields below)")
    p.add_argument("--verify", action="store_true",
                   help="relative pose of each re-ranked candidate (~0.2 s each on a CPU; needs --intrinsics)")
    add_intrinsics_arg(p, "the query images (for --verify)")
    p.add_argument("images", nargs="+", help="query images (files or folders)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.detector import candidate_record
    from vlad_localization.images import list_images, load_rgb
    from vlad_localization.pipeline import Localizer

    cfg = load_cli_config(args, {"localizer.rerank": False if args.no_rerank else None})
    camera = _camera(args, cfg)
    paths = [q for p in map(Path, args.images) for q in (list_images(p) if p.is_dir() else [p])]
    loc = Localizer.from_paths(args.map, args.checkpoint, cfg, args.device)
    try:
        for path in paths:
            rgb = load_rgb(path)
            res = loc.query(rgb, k=args.top_k)
            poses = [loc.verify(res, c, rgb, camera) if camera is not None and c.reranked else None
                     for c in res.candidates]
            if args.json:
                records = [dict(candidate_record(c), **({} if p is None else {
                    "relative_pose": p.to_json(), "map_pose": None if p.map_pose is None else p.map_pose.to_json()}))
                           for c, p in zip(res.candidates, poses)]
                print(json.dumps({"query": str(path), "candidates": records}))
            else:
                _print_table(path, res, poses)
            sys.stdout.flush()
    finally:
        loc.release()
    return 0


def _camera(args, cfg):
    """The query camera for --verify (None without it)."""
    from vlad_localization.cli.main import UserError
    from vlad_localization.verification import PinholeCamera

    if not cfg.verification.enabled:
        if args.intrinsics is not None:
            raise UserError("--intrinsics applies with --verify")
        return None
    if cfg.verification.intrinsics is None:
        raise UserError("--verify needs the query camera's intrinsics: --intrinsics fx,fy,cx,cy[,k1,k2,p1,p2] "
                        "or verification.intrinsics in the --config file")
    return PinholeCamera.from_list(cfg.verification.intrinsics)


def _print_table(path, res, poses) -> None:
    from vlad_localization.images.frames import seconds

    t = res.timings
    print(f"{path}  (encode {t['encode_ms']:.0f} ms, search {t['search_ms']:.1f} ms, rerank {t['rerank_ms']:.0f} ms)")
    print(f"  {'rank':>4} {'map_id':>7} {'global':>7} {'patch':>6} {'inliers':>7} {'stamp_s':>12}  source")
    for rank, (c, pose) in enumerate(zip(res.candidates, poses), 1):
        patch = "-" if math.isnan(c.patch_score) else f"{c.patch_score:.3f}"
        stamp = "-" if c.stamp_ns is None else f"{seconds(c.stamp_ns):.3f}"
        print(f"  {rank:>4} {c.map_id:>7} {c.global_similarity:>7.3f} {patch:>6} {c.inliers:>7} {stamp:>12}  {c.file}")
        if pose is not None:
            kind = "metric" if pose.metric else "unit t"
            print(f"{'':>8}relative pose: {pose.status} ({pose.inliers} inliers, {kind}, refine {pose.refine}, "
                  f"{pose.match_camera} camera) t={[round(float(v), 3) for v in pose.translation]}")
        if pose is not None and pose.map_pose is not None:
            m = pose.map_pose
            print(f"{'':>8}map pose ({'metric' if m.metric else 'monocular: the keyframe position'}): "
                  f"position={[round(float(v), 3) for v in m.position]} (std {m.position_std():.3f} m) "
                  f"orientation={[round(float(v), 4) for v in m.quaternion]} (std {m.rotation_std_deg():.2f} deg)")
