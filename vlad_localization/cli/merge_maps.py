"""`vlad-localization merge-maps`: combine maps built with the same model into one."""
from __future__ import annotations

import argparse

EPILOG = """\
The inputs must share the model (checkpoint and config); keyframe ids are renumbered in input
order and each input's runs are kept. The output is written atomically, so it may be an input.

Example:
  vlad-localization merge-maps maps/campus maps/run1 maps/run2 --index IVF256,Flat --nprobe 16
"""


def add_parser(sub) -> None:
    p = sub.add_parser("merge-maps", help="combine maps built with the same model (atomically)",
                       description="Combine maps built with the same model into one map.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output map directory (may be one of the inputs)")
    p.add_argument("maps", nargs="+", help="two or more input maps, in id order")
    p.add_argument("--index", help="index of the merged map (default: the first map's)")
    p.add_argument("--nprobe", type=int, help="IVF nprobe stored in the manifest")
    p.add_argument("--ef-search", type=int, help="HNSW efSearch stored in the manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.mapdb import merge_maps

    m = merge_maps(args.out, args.maps, index=args.index, nprobe=args.nprobe, ef_search=args.ef_search)
    print(f"merged {len(args.maps)} maps into {args.out}: {m.keyframes} keyframes, {len(m.runs)} runs, "
          f"index {m.index['effective']}")
    return 0
