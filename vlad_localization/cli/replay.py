"""`vlad-localization replay`: the node's pipeline offline (no DDS) over a bag's image topic."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from vlad_localization.cli.common import add_config_args
from vlad_localization.loop_closure import (
    DEFAULT_MIN_TIME_GAP_S, DEFAULT_SCORE_THRESHOLD, select_loop_closure,
)

DESCRIPTION = """\
Run the node's pipeline offline (no DDS) over a bag's image topic.

Writes, per frame, what vlad_localization_node would publish: the candidates in rank order
and the loop closure (the node's rule, vlad_localization.loop_closure.select_loop_closure).
Every frame is processed (no newest-frame dropping), so results do not depend on the machine's
speed.
"""

EPILOG = """\
Output (JSON Lines, one object per frame):
  query_stamp   frame stamp in seconds
  candidates    map_id, map_stamp (s), global_similarity, patch_score, inliers, in rank order
  loop_closure  [t_query, t_match] in seconds, or null
  timings       encode_ms, search_ms, rerank_ms, total_ms

Example:
  vlad-localization replay --bag run2.mcap --image-topic /camera/image_raw --map maps/run1 \\
      --checkpoint model.pth.tar --config speed --score-threshold 0.25 --out run2_closures.jsonl
"""


def add_parser(sub) -> None:
    p = sub.add_parser("replay", help="run the node's loop-closure pipeline offline over a bag",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", required=True, help="ROS 2 bag directory (.mcap or .db3)")
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--map", required=True, help="map directory from build-map")
    p.add_argument("--checkpoint", required=True, help="checkpoint the map was built with")
    add_config_args(p)
    p.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                   help=f"minimum patch score for a loop closure (default {DEFAULT_SCORE_THRESHOLD})")
    p.add_argument("--min-time-gap", type=float, default=DEFAULT_MIN_TIME_GAP_S,
                   help=f"minimum |t_query - t_match| in s (default {DEFAULT_MIN_TIME_GAP_S})")
    p.add_argument("--out", type=Path, default=None, help="JSON Lines output (default: stdout)")
    p.set_defaults(func=run)


def candidate_record(c) -> dict:
    """The ``~/candidates`` row of one candidate (times in seconds; None for no stamp and for the
    NaN patch score of a candidate that was not re-ranked)."""
    return {
        "map_id": int(c.map_id),
        "map_stamp": c.stamp_ns * 1e-9 if c.stamp_ns is not None else None,
        "global_similarity": float(c.global_similarity),
        "patch_score": None if math.isnan(c.patch_score) else float(c.patch_score),
        "inliers": int(c.inliers),
    }


def replay(localizer, frames, score_threshold: float, min_time_gap_s: float):
    """Yield one record per frame: ``query_stamp``, ``candidates``, ``loop_closure`` ([t_q, t_m] or
    None) and ``timings``."""
    for frame in frames:
        t0 = time.perf_counter()
        result = localizer.query(frame.rgb)
        closure = select_loop_closure(frame.stamp_ns, result.candidates, score_threshold, min_time_gap_s)
        yield {
            "query_stamp": frame.stamp_ns * 1e-9,
            "candidates": [candidate_record(c) for c in result.candidates],
            "loop_closure": [closure.t_query, closure.t_match] if closure else None,
            "timings": dict(result.timings, total_ms=(time.perf_counter() - t0) * 1e3),
        }


def run(args) -> int:
    from vlad_localization.config import load_config
    from vlad_localization.images.bag import BagImageSource
    from vlad_localization.pipeline import Localizer

    cfg = load_config(args.config)
    source = BagImageSource(args.bag, args.image_topic, max_pixels=cfg.localizer.max_image_pixels)  # fails fast
    localizer = Localizer.from_paths(args.map, args.checkpoint, cfg, device=args.device)
    out = open(args.out, "w") if args.out else sys.stdout
    frames = closures = 0
    try:
        for record in replay(localizer, source, args.score_threshold, args.min_time_gap):
            frames += 1
            out.write(json.dumps(record) + "\n")
            if record["loop_closure"]:
                closures += 1
                best = next(c for c in record["candidates"] if c["map_stamp"] == record["loop_closure"][1])
                print(f"loop closure t={record['query_stamp']:.3f} -> keyframe {best['map_id']} "
                      f"t={best['map_stamp']:.3f} patch score {best['patch_score']:.3f}", file=sys.stderr)
    finally:
        if args.out:
            out.close()
        localizer.release()
    print(f"replayed {source.summary()}; {closures} loop closure(s)"
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0
