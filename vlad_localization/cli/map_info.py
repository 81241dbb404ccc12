"""`vlad-localization map-info` (placeholder: implemented by its issue)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("map-info", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("map-info is not implemented yet")
