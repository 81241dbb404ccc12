"""`vlad-localization build-map` (placeholder: implemented by its issue)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("build-map", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("build-map is not implemented yet")
