"""``vlad-localization``: the command-line tool. Each subcommand lives in its own module
(``vlad_localization.cli.<name>``) with ``add_parser(subparsers)`` and ``run(args) -> int``;
this file only dispatches."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = (
    "download_weights",
    "init_model",
    "encode",
    "match",
    "build_map",
    "map_info",
    "merge_maps",
    "query",
    "replay",
    "evaluate",
    "train",
    "calibrate",
)

DESCRIPTION = """\
Patch-NetVLAD visual loop closure and relocalization.

Typical workflow:
  1. vlad-localization download-weights pittsburgh_WPCA512   (then --checkpoint pittsburgh_WPCA512)
     or vlad-localization init-model --backbone-weights vgg16.pth --images map_imgs/ --out model.pth.tar
  2. vlad-localization build-map --checkpoint model.pth.tar --config speed --bag run1.mcap \\
         --image-topic /camera/image_raw --out maps/run1
  3. vlad-localization query --map maps/run1 --checkpoint model.pth.tar --json query.png
  4. ros2 run vlad_localization vlad_localization_node --ros-args -p map_path:=maps/run1 ...
"""


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlad-localization",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"vlad_localization.cli.{name}").add_parser(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    """Our ``vlad_localization`` loggers at INFO (DEBUG with -v); third-party ones (faiss's loader
    chatter, ...) at WARNING unless -v."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("vlad_localization").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
