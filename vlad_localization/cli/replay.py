"""`vlad-localization replay`: the node's per-frame detector offline (no DDS) over a bag or an image folder."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from vlad_localization.choices import MODES, names
from vlad_localization.cli.main import UserError
from vlad_localization.cli.common import (
    add_acceptance_args, add_config_args, add_depth_arg, add_intrinsics_arg, add_source_args, load_cli_config,
    open_depth, open_frames,
)
from vlad_localization.loop_closure import DECISIONS

DESCRIPTION = """\
Run the node's loop-closure detector offline (no DDS) over a bag's image topic or an image folder.

Writes, per frame, what vlad_localization_node would publish: the candidates in rank order, the
loop closure and the keyframe inserted into this run's store. Every frame is processed (no
newest-frame dropping), so results do not depend on the machine's speed.

Modes (--mode, default: the config's loop_closure.mode):
""" + "\n".join(f"  {name:13s} {text}" for name, text in MODES.items())

EPILOG = """\
Output (JSON Lines, one object per frame):
  query_stamp         frame stamp in seconds
  camera              0
  candidates          in rank order: map_id, map_stamp (s), global_similarity, patch_score,
                      inliers, source (0 = prebuilt map, 1 = this run), fused_score, file,
                      sequence_similarity (with --sequence-length, else null)
  loop_closure        [t_query, t_match] in seconds, or null
  loop_closure_match  {map_id, source, rank, score} of the accepted candidate, or null
  decision            {status, rank, consistent_frames}: what the acceptance rule made of the
                      frame's proposal (its best-ranked candidate outside the time gap), status:
{decisions}
  keyframe            id of the keyframe this frame became in the run's store, or null
  relative_pose       with --verify, the loop closure's verification (match --help: R, t, metric,
                      inliers, covariance, status, refine, match_camera), or null
  map_pose            with --verify, the robot's pose in the map from a closure verified against a
                      prebuilt map keyframe with a pose (query --help: position, orientation,
                      covariance, metric), or null
  timings             encode_ms, search_ms (sequence_ms included), sequence_ms, rerank_ms, decide_ms,
                      verify_ms, insert_ms, total_ms

Stamps: the bag's header stamps; for --images the --poses CSV's stamp column, else index / --fps.

Examples:
  vlad-localization replay --images run/ --poses run/poses.csv --mode loop_closure \\
      --checkpoint model.pth.tar --config speed --min-gap 30 --save-map maps/run --out run.jsonl
  vlad-localization replay --bag run2.mcap --image-topic /camera/image_raw --map maps/run1 \\
      --checkpoint model.pth.tar --config speed --score-threshold 0.25 --out run2_closures.jsonl
""".replace("{decisions}", "\n".join(f"                        {k:16s}{v}" for k, v in DECISIONS.items()))


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="run the node's loop-closure detector offline over a bag or image folder",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    p.add_argument("--map", help="prebuilt map directory (modes localize and both)")
    p.add_argument("--checkpoint", required=True, help="Patch-NetVLAD checkpoint (the map's, when there is one)")
    add_config_args(p)
    g = p.add_argument_group("loop closure (override the config's loop_closure section)")
    g.add_argument("--mode", choices=tuple(MODES), help=f"{names(MODES)} (default: the config's)")
    g.add_argument("--score-threshold", type=float, metavar="S", help="minimum candidate score in [0, 1]")
    g.add_argument("--min-gap", "--min-time-gap", dest="min_gap", type=float, metavar="S",
                   help="closures and the run's search skip keyframes less than S seconds old")
    g.add_argument("--min-travel", type=float, metavar="M",
                   help="... and (with poses) less than M metres back along the trajectory")
    g.add_argument("--max-keyframes", type=int, metavar="N", help="bound of the run's keyframe store")
    g.add_argument("--min-distance", type=float, metavar="M", help="run keyframes at least M metres apart")
    g.add_argument("--min-descriptor-change", type=float, metavar="C", help="run keyframes: 1 - cosine >= C")
    add_acceptance_args(g)
    v = p.add_argument_group("geometric verification of each loop closure (relative_pose in the output)")
    v.add_argument("--verify", action="store_true", help="verify each accepted loop closure (needs intrinsics)")
    add_intrinsics_arg(v, "the images (a bag's CameraInfo beside the image topic is used when there is one)")
    add_depth_arg(v, "each frame's depth: the run's keyframes keep it and loop closures against them are "
                     "metric (PnP)")
    p.add_argument("--save-map", metavar="DIR", help="at the end, write this run's keyframes as a map")
    p.add_argument("--out", type=Path, default=None, help="JSON Lines output (default: stdout)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.detector import LoopClosureDetector
    from vlad_localization.images.frames import seconds
    from vlad_localization.verification.depth_sources import DepthSource

    cfg = load_cli_config(args)
    depth_of = open_depth(args)
    frames = open_frames(args, cfg.localizer.max_image_pixels)
    if cfg.verification.enabled and cfg.verification.intrinsics is None and not frames.camera_models:
        raise UserError("--verify needs the camera intrinsics: --intrinsics fx,fy,cx,cy[,k1,k2,p1,p2], "
                        "verification.intrinsics in the --config file, or a bag with CameraInfo beside the image topic")
    detector = LoopClosureDetector.from_config(cfg, args.checkpoint, args.map, device=args.device)
    out = open(args.out, "w") if args.out else sys.stdout
    closures = 0
    decisions: Counter = Counter()
    best_below = None  # (score, query stamp, candidate) of the highest proposal below the threshold
    try:
        for frame in frames:
            depth = None if depth_of is None else DepthSource.computed(lambda f=frame: depth_of(f))  # when needed
            result = detector.process(frame.stamp_ns, frame.rgb, frame.pose, camera_model=frame.camera, depth=depth)
            frame.image = None if frame.loader is not None else frame.image  # free pixels
            record = result.to_record()
            decisions[result.decision.status] += 1
            if result.decision.status == "below_threshold":
                c = result.candidates[result.decision.rank]
                if best_below is None or c.score > best_below[0]:
                    best_below = (c.score, frame.stamp_ns, c)
            out.write(json.dumps(record) + "\n")
            if result.loop_closure:
                closures += 1
                c = result.loop_closure.candidate
                print(f"loop closure t={seconds(result.loop_closure.query_stamp_ns):.3f} -> {c.store.label} keyframe "
                      f"{c.map_id} t={seconds(result.loop_closure.match_stamp_ns):.3f} score {c.score:.3f}",
                      file=sys.stderr)
        if args.save_map:
            manifest = detector.save_map(args.save_map, sources=[frames.origin])
            print(f"saved this run's {manifest.keyframes} keyframes as map {args.save_map}", file=sys.stderr)
    finally:
        if args.out:
            out.close()
        detector.release()
    held = decisions.get("inconsistent", 0)
    print(f"replayed {frames.origin}: {frames.summary()}; {closures} loop closure(s)"
          + (f", {held} confident proposal(s) held back as inconsistent" if held else "")
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    if not closures and best_below is not None:
        score, stamp_ns, c = best_below
        print(f"no loop closure: the best proposal (t={seconds(stamp_ns):.3f} -> {c.store.label} keyframe {c.map_id}) "
              f"scored {score:.3f}, below loop_closure.score_threshold {cfg.loop_closure.score_threshold:g}. If the "
              "run revisits places, fit the threshold to your robot: vlad-localization calibrate --images RUN "
              "--poses RUN.csv --keep-model --out robot.yaml, then --config robot.yaml", file=sys.stderr)
    return 0
