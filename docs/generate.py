"""Regenerate every generated part of the documentation, so that no table is kept by hand:

- docs/ros.md's parameter table, from vlad_localization/ros/params.py (``markdown_table()``);
- benchmarks/RESULTS.md and README.md's headline-figures table, from benchmarks/results/*.json
  (benchmarks/results.py).

    python docs/generate.py            # rewrite them
    python docs/generate.py --check    # exit 1 if any is stale (test/test_docs.py checks the same)
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROS_MD = REPO / "docs" / "ros.md"


def _results_module():
    spec = importlib.util.spec_from_file_location("benchmark_results", REPO / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated() -> dict[Path, str]:
    """Every generated file, as it must read."""
    from vlad_localization.ros.params import markdown_table
    results = _results_module()
    out = results.generated()
    out[ROS_MD] = results.replace_block(ROS_MD.read_text(encoding="utf-8"), "parameters", markdown_table(),
                                        "docs/ros.md")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated part is stale")
    args = parser.parse_args(argv)
    expected = generated()
    stale = [path for path, text in expected.items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(REPO)} (run python docs/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(expected[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
