"""`vlad-localization calibrate`: a loop-closure threshold (and fused model) for a stated precision on
your own held-out revisits (the work is in :mod:`vlad_localization.calibration`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlad_localization.cli.common import add_acceptance_args
from vlad_localization.cli.evaluate import add_query_args, evaluate_pass
from vlad_localization.cli.main import UserError

EPILOG = """\
Give held-out revisits of your own runs: a map (build-map) and query images of the same places
with ground truth (the options of `evaluate`). One evaluate pass scores every query's candidates;
the fused score's coefficients are refitted on them (the two-step fit of fusion_fit: the ranking,
then the acceptance; --keep-model keeps the config's), and the threshold written is the lowest
whose acceptances reach --precision on them (the most recall at that precision), by the node's rule
as `evaluate` applies it (the config's loop_closure.consistency, or --consistency). Use queries not
used to train the checkpoint (train's validation places or another run).

Writes --out, a config YAML that every command and the node take (--config OUT.yaml /
-p preset:=OUT.yaml):
  base: speed                    (the --config preset; a YAML --config is copied)
  matching: {fusion_model: {...}}
  loop_closure: {score_threshold: 0.93...}
and prints the precision and recall that threshold gives on these queries (--json: as an object).

Example:
  vlad-localization calibrate --map maps/run1 --queries run2_frames/ --poses run2.csv --radius 10 \\
      --checkpoint trained.pth.tar --config speed --precision 0.99 --out my_robot.yaml
"""


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="choose loop_closure.score_threshold for a precision on your revisits",
                       description="Choose the fused loop-closure threshold that reaches --precision on held-out\n"
                                   "revisits of your runs and write it as a config YAML.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_query_args(p)
    p.add_argument("--precision", type=float, default=0.99, help="precision to reach (default 0.99)")
    p.add_argument("--keep-model", action="store_true",
                   help="keep the config's matching.fusion_model (default: refit it on these queries)")
    add_acceptance_args(p.add_argument_group("loop-closure acceptance (as evaluate)"), sequence=False)
    p.add_argument("--out", required=True, type=Path, metavar="OUT.yaml", help="the calibrated config to write")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.calibration import calibrate, config_yaml

    if not 0 < args.precision <= 1:
        raise UserError(f"--precision must be in (0, 1], got {args.precision}")
    cfg, loc, records, keyframes = evaluate_pass(args)
    loc.release()
    try:
        result = calibrate(records, cfg.matching.fusion_model, args.precision, cfg.loop_closure, keyframes,
                           refit=not args.keep_model)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise UserError(f"cannot refit the fused model on these {len(records)} queries ({exc}): give more revisits, "
                        "or --keep-model to keep the config's matching.fusion_model") from None
    if result.score_threshold is None:
        raise UserError(f"no threshold reaches precision {args.precision:g} on these {result.n_queries} queries "
                        f"({result.n_queries_with_match} with a true match): lower --precision, or give more "
                        "revisits or a better checkpoint (vlad-localization train)")
    note = (f"calibrated by vlad-localization calibrate: precision {result.precision:.4f}, recall {result.recall:.4f} "
            f"on {result.n_queries} queries of {args.queries} (map {args.map}, checkpoint {args.checkpoint})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(config_yaml(args.config, result, note, cfg.loop_closure))
    if args.json:
        args.json.write_text(json.dumps({**result.as_dict(), "config": str(args.out)}, indent=1) + "\n")
    print(f"loop_closure.score_threshold {result.score_threshold}: precision {result.precision:.4f}, recall "
          f"{result.recall:.4f} on {result.n_queries} queries ({result.n_queries_with_match} with a true match)"
          + ("" if result.refit else ", fused model kept"))
    print(f"wrote {args.out} (use --config {args.out})")
    return 0
