"""`vlad-localization build-map`: encode a bag or an image folder into a map (atomically)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlad_localization.cli.common import (
    add_config_args, add_depth_arg, add_intrinsics_arg, add_source_args, load_cli_config, open_depth, open_frames,
)
from vlad_localization.cli.main import UserError

log = logging.getLogger(__name__)

EPILOG = """\
Examples:
  vlad-localization build-map --checkpoint model.pth.tar --config speed --bag run1.mcap \\
      --image-topic /camera/image_raw --pose-topic /odom --out maps/run1
  vlad-localization build-map --checkpoint model.pth.tar --images frames/ --poses frames/poses.csv \\
      --min-distance 0.5 --out maps/campus
  vlad-localization build-map --checkpoint model.pth.tar --bag run2.mcap \\
      --image-topic /camera/image_raw --append --out maps/run1

Query and replay the map with the same --checkpoint and --config.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "build-map", help="build (or --append to) a map from a ROS 2 bag or an image folder",
        description="Select keyframes from a bag's image topic or an image folder, encode them and\n"
        "write a map directory atomically (the previous map at --out stays intact until the new\n"
        "one is complete).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="Patch-NetVLAD checkpoint (.pth.tar)")
    p.add_argument("--out", required=True, help="map directory to create (or replace / --append to)")
    add_source_args(p)
    p.add_argument("--append", action="store_true", help="add this run to the existing map at --out")
    add_config_args(p)
    g = p.add_argument_group("map options (override the config's map section)")
    g.add_argument("--index", help="Flat | IVF<n>,Flat | IVF<n>,PQ<m> | HNSW<M>")
    g.add_argument("--min-time-gap", type=float, metavar="S", help="keyframes at least S seconds apart")
    g.add_argument("--min-distance", type=float, metavar="M", help="keyframes at least M metres apart (with poses)")
    g.add_argument("--min-descriptor-change", type=float, metavar="C", help="1 - cosine to the last keyframe >= C")
    g.add_argument("--no-thumbnails", action="store_true", help="do not store keyframe thumbnails")
    v = p.add_argument_group("views for geometric verification (see below)")
    add_intrinsics_arg(v, "the images without a CameraInfo (stored per keyframe)")
    add_depth_arg(v, "stored per keyframe")
    v.add_argument("--no-views", action="store_true",
                   help="store no full-resolution image or depth per keyframe (map.store_views false; "
                        "the camera model is still stored)")
    p.add_argument("--batch-size", type=int, help="encoding batch size (model.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.mapdb import build_map
    from vlad_localization.model.encoder import Encoder

    cfg = load_cli_config(args)
    open_depth(args)  # checks --depth / --depth-topic
    frames = open_frames(args)
    encoder = Encoder.from_checkpoint(args.checkpoint, cfg.model, args.device)
    out = Path(args.out)
    try:
        summary = build_map(out, frames, encoder, cfg, [frames.origin], append=args.append,
                            progress=not args.no_progress, total=frames.expected(), depth_dir=args.depth)
    except KeyboardInterrupt:
        raise UserError(f"build interrupted: nothing written; {_previous(out)}") from None
    except Exception:
        print(f"build-map failed: nothing written; {_previous(out)}", file=sys.stderr)
        raise
    finally:
        encoder.release()
    print(summary)
    return 0


def _previous(out: Path) -> str:
    return f"the existing map at {out} is unchanged" if out.exists() else f"no map at {out}"
