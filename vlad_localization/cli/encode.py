"""`vlad-localization encode` (placeholder: implemented by its issue)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("encode is not implemented yet")
