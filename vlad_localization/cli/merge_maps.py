"""`vlad-localization merge-maps` (placeholder: implemented by its issue)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("merge-maps", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("merge-maps is not implemented yet")
