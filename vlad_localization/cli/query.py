"""`vlad-localization query`: rank map keyframes for query images (``--json`` fields in EPILOG)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from vlad_localization.cli.common import add_config_args, load_cli_config, positive_int

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
    p.add_argument("images", nargs="+", help="query images (files or folders)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.detector import candidate_record
    from vlad_localization.images import list_images, load_rgb
    from vlad_localization.pipeline import Localizer

    cfg = load_cli_config(args, {"localizer.rerank": False if args.no_rerank else None})
    paths = [q for p in map(Path, args.images) for q in (list_images(p) if p.is_dir() else [p])]
    loc = Localizer.from_paths(args.map, args.checkpoint, cfg, args.device)
    try:
        for path in paths:
            res = loc.query(load_rgb(path), k=args.top_k)
            if args.json:
                print(json.dumps({"query": str(path), "candidates": [candidate_record(c) for c in res.candidates]}))
            else:
                _print_table(path, res)
            sys.stdout.flush()
    finally:
        loc.release()
    return 0


def _print_table(path, res) -> None:
    t = res.timings
    print(f"{path}  (encode {t['encode_ms']:.0f} ms, search {t['search_ms']:.1f} ms, rerank {t['rerank_ms']:.0f} ms)")
    print(f"  {'rank':>4} {'map_id':>7} {'global':>7} {'patch':>6} {'inliers':>7} {'stamp_s':>12}  source")
    for rank, c in enumerate(res.candidates, 1):
        patch = "-" if math.isnan(c.patch_score) else f"{c.patch_score:.3f}"
        stamp = "-" if c.stamp_ns is None else f"{c.stamp_ns / 1e9:.3f}"
        print(f"  {rank:>4} {c.map_id:>7} {c.global_similarity:>7.3f} {patch:>6} {c.inliers:>7} {stamp:>12}  {c.file}")
