"""`vlad-localization match` (placeholder: implemented by its issue)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("match", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise NotImplementedError("match is not implemented yet")
