"""What the subcommands share: the ``--config``/``--device`` options, turning parsed flags into a
configuration (through :func:`vlad_localization.config.apply_overrides`), argparse types."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

DEFAULT_CONFIG = "speed"  # of every subcommand, so a map built without --config is queried with the same model

# CLI flag (argparse dest) -> configuration key; a flag left unset (None) keeps the config's value
CONFIG_FLAGS: Mapping[str, str] = {
    "index": "map.index",
    "min_time_gap": "map.min_time_gap_s",
    "min_distance": "map.min_distance_m",
    "min_descriptor_change": "map.min_descriptor_change",
    "batch_size": "model.batch_size",
    "device": "model.device",
    "half": "model.half",
    "matcher": "matching.matcher",
    "top_k": "localizer.top_k",
    "mode": "loop_closure.mode",
    "score_threshold": "loop_closure.score_threshold",
    "min_gap": "loop_closure.min_time_gap_s",
    "min_travel": "loop_closure.min_travel_m",
    "max_keyframes": "loop_closure.max_keyframes",
    "consistency": "loop_closure.consistency",
    "consistency_window": "loop_closure.consistency_window_s",
    "consistency_window_m": "loop_closure.consistency_window_m",
    "sequence_length": "loop_closure.sequence_length",
    "verify": "verification.enabled",
    "intrinsics": "verification.intrinsics",
}


def add_config_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    """``--config`` (same default for every subcommand) and, unless ``device=False``, ``--device``."""
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="PRESET|YAML",
                   help="preset (performance, speed, storage) or YAML file: model, patch sizes, matching "
                        f"(default: {DEFAULT_CONFIG})")
    if device:
        p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the config's model.device)")


def add_acceptance_args(g, sequence: bool = True) -> None:
    """The loop-closure acceptance options (temporal consistency, sequence scoring) of replay and
    evaluate, so both apply the node's rule (see ``vlad_localization.loop_closure``)."""
    g.add_argument("--consistency", type=int, metavar="K",
                   help="a loop closure needs K consecutive frames whose confident proposals agree (1 = each "
                        "frame on its own)")
    g.add_argument("--consistency-window", type=float, metavar="S",
                   help="agreeing proposals: matched keyframes at most S seconds apart")
    g.add_argument("--consistency-window-m", type=float, metavar="M",
                   help="... or, with keyframe positions, at most M metres apart (0 = by time)")
    if not sequence:
        return
    g.add_argument("--sequence-length", type=int, metavar="L",
                   help="rank candidates by the mean similarity of the last L frames along each candidate's "
                        "run (SeqSLAM; 0 = off)")


def load_cli_config(args, extra: Mapping[str, Any] | None = None):
    """The Config named by ``--config`` with the flags of ``args`` found in :data:`CONFIG_FLAGS`
    (and ``extra`` {"section.key": value}) applied; a bad value raises ``UserError``."""
    from vlad_localization.cli.main import UserError
    from vlad_localization.config import ConfigError, apply_overrides, load_config

    overrides = {key: getattr(args, flag, None) for flag, key in CONFIG_FLAGS.items()}
    if getattr(args, "no_thumbnails", False):
        overrides["map.store_thumbnails"] = False
    if getattr(args, "no_views", False):
        overrides["map.store_views"] = False
    for flag in ("half", "verify"):  # store_true flags: only when given do they override
        if getattr(args, flag, None) is False:
            overrides[CONFIG_FLAGS[flag]] = None
    overrides.update(extra or {})
    try:
        return apply_overrides(load_config(args.config), overrides, where="command-line options")
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def add_intrinsics_arg(p, what: str = "the images") -> None:
    """``--intrinsics fx,fy,cx,cy[,k1,k2,p1,p2]`` (sets ``verification.intrinsics``, :data:`CONFIG_FLAGS`)."""
    p.add_argument("--intrinsics", type=float_list, metavar="fx,fy,cx,cy[,k1,k2,p1,p2]",
                   help=f"camera intrinsics of {what} (default: the config's verification.intrinsics)")


def add_depth_arg(p, what: str) -> None:
    """``--depth DIR`` (depth images named like ``--images``) and ``--depth-topic`` (a bag's), read
    by :func:`open_depth` and :func:`open_frames`."""
    p.add_argument("--depth", type=Path, metavar="DIR",
                   help=f"--images only: depth images registered to the images (at their size or scaled), named "
                        f"like them (<stem>.png 16-bit x verification.depth_scale m, default mm; or .tif/.tiff/.exr "
                        f"float32 m), {what}")
    p.add_argument("--depth-topic", metavar="TOPIC",
                   help="--bag only: registered depth images (sensor_msgs/Image 16UC1 mm or 32FC1 m), each frame "
                        f"taking the one nearest in stamp (as the node's depth_tolerance_s default), {what}")


def open_depth(args):
    """``reader(frame)`` -> the frame's depth or None: the ``--depth`` folder (a
    :class:`~vlad_localization.verification.depth_sources.DepthFolder`), the ``--depth-topic`` image
    the bag source paired with the frame, or None without either; misuse raises UserError."""
    from vlad_localization.cli.main import UserError
    from vlad_localization.verification.depth_sources import DepthFolder

    if getattr(args, "depth_topic", None):
        if not args.bag:
            raise UserError("--depth-topic applies to --bag; use --depth DIR with --images")
        return lambda frame: frame.depth
    if getattr(args, "depth", None) is None:
        return None
    if not args.images:
        raise UserError("--depth applies to --images (depth images named like the images); use --depth-topic "
                        "with --bag")
    try:
        return DepthFolder(args.depth)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The frame source of build-map and replay: ``--bag`` (+ topics) or ``--images`` (+ CSV)."""
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
    p.add_argument("--fps", type=float, default=1.0,
                   help="--images without CSV stamps: frame i is stamped i / FPS seconds (default 1)")


def open_frames(args, max_pixels: int | None = None):
    """The :class:`~vlad_localization.images.frames.FrameSource` of :func:`add_source_args`' options;
    misuse raises UserError."""
    from vlad_localization.cli.main import UserError
    from vlad_localization.images import iter_bag, iter_folder, list_image_topics

    if args.images:
        if args.image_topic or args.pose_topic:
            raise UserError("--image-topic/--pose-topic apply to --bag; use --poses with --images")
        return iter_folder(args.images, args.poses, fps=args.fps)
    if args.poses:
        raise UserError("--poses applies to --images; use --pose-topic with --bag")
    if not args.image_topic:
        topics = list_image_topics(args.bag)
        raise UserError(f"--image-topic is required with --bag; image topics in {args.bag}: "
                        + (", ".join(f"{t} ({m})" for t, m in topics.items()) or "none"))
    extra = {} if max_pixels is None else {"max_pixels": max_pixels}
    return iter_bag(args.bag, args.image_topic, args.pose_topic, depth_topic=getattr(args, "depth_topic", None),
                    **extra)


def positive_int(text: str, least: int = 1) -> int:
    """argparse type: an integer >= 1 (>= ``least``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def count_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return positive_int(text, 0)


def float_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers (``458.6,457.3,367.2,248.4``)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def path_list(text: str) -> list[Path]:
    """argparse type: comma-separated file paths."""
    return [Path(v) for v in text.split(",") if v]
