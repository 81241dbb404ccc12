"""`vlad-localization build-map`: encode a bag or an image folder into a map (atomically)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlad_localization.cli.common import add_config_args, load_cli_config
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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bag", help="ROS 2 bag (directory, .db3 or .mcap)")
    src.add_argument("--images", help="folder of images (natural order)")
    p.add_argument("--image-topic", help="bag image topic (sensor_msgs/Image or CompressedImage)")
    p.add_argument("--pose-topic", help="bag pose topic (nav_msgs/Odometry or PoseStamped), interpolated")
    p.add_argument("--poses", metavar="CSV",
                   help="stamps/poses for --images: a header row naming the columns (any order) "
                        "file[,stamp_ns|stamp][,x,y[,z][,qx,qy,qz,qw|yaw]], or no header and rows "
                        "file,x,y,yaw or file,x,y,z,qx,qy,qz,qw; file: an image name or a path relative "
                        "to the CSV; stamp in s, yaw in rad")
    p.add_argument("--append", action="store_true", help="add this run to the existing map at --out")
    add_config_args(p)
    g = p.add_argument_group("map options (override the config's map section)")
    g.add_argument("--index", help="Flat | IVF<n>,Flat | IVF<n>,PQ<m> | HNSW<M>")
    g.add_argument("--min-time-gap", type=float, metavar="S", help="keyframes at least S seconds apart")
    g.add_argument("--min-distance", type=float, metavar="M", help="keyframes at least M metres apart (with poses)")
    g.add_argument("--min-descriptor-change", type=float, metavar="C", help="1 - cosine to the last keyframe >= C")
    g.add_argument("--no-thumbnails", action="store_true", help="do not store keyframe thumbnails")
    p.add_argument("--batch-size", type=int, help="encoding batch size (model.batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _frames(args):
    """(frames iterable, sources, total or None)."""
    from vlad_localization.images import iter_bag, iter_folder, list_image_topics, list_images

    if args.images:
        if args.image_topic or args.pose_topic:
            raise UserError("--image-topic/--pose-topic apply to --bag; use --poses with --images")
        return iter_folder(args.images, args.poses), [str(Path(args.images).absolute())], len(list_images(args.images))
    if args.poses:
        raise UserError("--poses applies to --images; use --pose-topic with --bag")
    if not args.image_topic:
        topics = list_image_topics(args.bag)
        raise UserError(f"--image-topic is required with --bag; image topics in {args.bag}: "
                        + (", ".join(f"{t} ({m})" for t, m in topics.items()) or "none"))
    source = iter_bag(args.bag, args.image_topic, args.pose_topic)
    return source, [f"{Path(args.bag).absolute()}:{args.image_topic}"], _count_messages(source)


def _count_messages(source) -> int | None:
    try:
        from rosbags.highlevel import AnyReader

        path = Path(source.bag_path)
        with AnyReader([path if path.is_dir() else path.parent]) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic == source.image_topic)
    except Exception:  # only for the progress bar's ETA
        return None


def run(args) -> int:
    from vlad_localization.mapdb import build_map
    from vlad_localization.model.encoder import Encoder

    cfg = load_cli_config(args)
    frames, sources, total = _frames(args)
    encoder = Encoder.from_checkpoint(args.checkpoint, cfg.model, args.device)
    out = Path(args.out)
    try:
        summary = build_map(out, frames, encoder, cfg, sources, append=args.append,
                            progress=not args.no_progress, total=total)
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
