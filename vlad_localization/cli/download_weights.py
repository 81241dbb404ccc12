"""`vlad-localization download-weights`: official checkpoints by name into the cache."""
from __future__ import annotations

import argparse
import json
import re

EPILOG = """\
Downloads into the cache ($VLAD_LOCALIZATION_CACHE, else $XDG_CACHE_HOME/vlad_localization, else
~/.cache/vlad_localization), where every --checkpoint NAME (and the node's checkpoint parameter)
finds it. An interrupted download continues where it stopped (HTTP Range) when run again. Before a
file is moved into place its size and sha256 are checked against the table, and it is loaded once
to check its backbone, clusters and PCs. More names: an extra table in $VLAD_LOCALIZATION_CHECKPOINTS.

Examples:
  vlad-localization download-weights --list
  vlad-localization download-weights pittsburgh_WPCA512
  vlad-localization download-weights --mirror http://10.0.0.5/patchnetvlad mapillary_WPCA128
  vlad-localization query --map maps/run1 --checkpoint pittsburgh_WPCA512 frame.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "download-weights",
        help="download official Patch-NetVLAD checkpoints by name (resumable, verified)",
        description="Download official Patch-NetVLAD checkpoints into the cache, by name.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="checkpoint names, e.g. pittsburgh_WPCA512 (see --list)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every known checkpoint (about 3 GB)")
    which.add_argument("--list", action="store_true",
                       help="list the known checkpoints: size, cache state, the presets each fits")
    p.add_argument("--mirror", metavar="URL",
                   help="fetch URL/<file> instead (the hub's file name, e.g. pitts_WPCA512.pth.tar; "
                        "then URL/<NAME>.pth.tar): a site serving the same files")
    p.add_argument("--sha256", metavar="HEX", help="pin the file's sha256 (one NAME only; overrides the table's)")
    p.add_argument("--json", action="store_true", help="with --list: machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..model.known_checkpoints import cache_dir, load_table
    from .main import UserError

    table = load_table()
    if args.list:
        return _print_list(table, args.json)
    names = list(table) if args.all else [n.removesuffix(".pth.tar") for n in args.names]
    if not names:
        raise UserError("name the checkpoint(s) to download, or --all; --list shows them")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown checkpoint(s) {', '.join(unknown)}; known: {', '.join(table)}")
    if args.sha256 and len(names) != 1:
        raise UserError("--sha256 pins the digest of one file: name exactly one checkpoint")
    if args.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        raise UserError(f"--sha256 {args.sha256!r}: expected 64 hex digits")
    print(f"cache: {cache_dir()}")
    for name in names:
        _download(table[name], args.mirror, args.sha256)
    return 0


def _download(entry, mirror: str | None, sha256: str | None) -> None:
    from ..model.checkpoint import CheckpointError
    from ..model.download import DownloadError
    from ..model.weights import describe_shape, download_checkpoint
    from .main import UserError

    try:
        fetched = download_checkpoint(entry, mirror, sha256)
    except (DownloadError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    state = "downloaded" if fetched.downloaded else "already cached"
    print(f"{entry.name}: {state}, verified ({describe_shape(entry)}): {fetched.path}")


def _print_list(table, as_json: bool) -> int:
    from ..model.known_checkpoints import cache_dir, cache_state, cached_path, presets_fitting

    rows = [{"name": e.name, "size": e.size, "sha256": e.sha256, "url": e.url, "state": cache_state(e),
             "path": str(cached_path(e.name)), "backbone": e.backbone, "num_clusters": e.num_clusters,
             "num_pcs": e.num_pcs, "presets": presets_fitting(e.shape())} for e in table.values()]
    if as_json:
        print(json.dumps({"cache": str(cache_dir()), "checkpoints": rows}, indent=2))
        return 0
    print(f"cache: {cache_dir()}")
    print(f"{'NAME':<22}{'SIZE':>10}  {'STATE':<12}{'MODEL':<22}PRESETS")
    for r in rows:
        size = f"{r['size'] / 1e6:.1f} MB" if r["size"] else "?"
        model = f"{r['backbone']} K={r['num_clusters']} PCs={r['num_pcs']}"
        print(f"{r['name']:<22}{size:>10}  {r['state']:<12}{model:<22}{', '.join(r['presets']) or '-'}")
    return 0
