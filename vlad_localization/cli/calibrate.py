"""`vlad-localization calibrate`: a loop-closure threshold (and fused model) for a stated precision on
your own held-out revisits (the work is in :mod:`vlad_localization.calibration`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vlad_localization.cli.common import add_acceptance_args
from vlad_localization.cli.evaluate import add_query_args, evaluate_pass
from vlad_localization.cli.main import UserError
from vlad_localization.cli.train import add_place_args, add_run_args, place_criteria, read_runs

EPILOG = """\
Give held-out revisits of your own runs, in one of two ways:
  a map and query images with ground truth (the options of `evaluate`):
    --map DIR --queries DIR  and one of --same-name, --same-index, --gt FILE,
                             --poses CSV --radius R (query positions; map positions from the map)
  runs with poses (the runs `train` takes; no --queries):
    --images DIR --poses CSV (repeatable), --bag BAG --image-topic T --pose-topic P, --map DIR
    (a map built with poses); every frame is a query against all the others, leaving out the
    frames of its own run closer in time than --min-gap-s (as the node's time gap); its true
    matches are the frames within --positive-m (and --positive-deg); a frame with none counts
    against precision when its top-1 is accepted.

One evaluate pass scores every query's candidates; the fused score's coefficients are refitted on
them (the two-step fit of fusion_fit: the ranking, then the acceptance; --keep-model keeps the
config's), and the threshold written is the lowest whose acceptances reach --precision on them
(the most recall at that precision), by the node's rule as `evaluate` applies it (the config's
loop_closure.consistency, or --consistency). Use frames not used to train the checkpoint (train's
validation places, which `train` calibrates on at its end, or another run).

Writes --out, a config YAML that every command and the node take (--config OUT.yaml /
-p preset:=OUT.yaml):
  base: speed                    (the --config preset; a YAML --config is copied)
  matching: {fusion_model: {...}}
  loop_closure: {score_threshold: 0.93...}
and prints the precision and recall that threshold gives on these queries (--json: as an object).

Examples:
  vlad-localization calibrate --map maps/run1 --queries run2_frames/ --poses run2.csv --radius 10 \\
      --checkpoint trained.pth.tar --config speed --precision 0.99 --out my_robot.yaml
  vlad-localization calibrate --map maps/run1 --images run2_frames/ --poses run2.csv --positive-m 10 \\
      --checkpoint trained.pth.tar --config speed --precision 0.99 --out my_robot.yaml
"""
QUERY_ONLY = ("gt", "same_index", "same_name", "radius", "map_poses")


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="choose loop_closure.score_threshold for a precision on your revisits",
                       description="Choose the fused loop-closure threshold that reaches --precision on held-out\n"
                                   "revisits of your runs and write it as a config YAML.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_query_args(p, runs=True)
    add_run_args(p.add_argument_group("map and runs (--map and --poses also serve --queries)"))
    add_place_args(p.add_argument_group("places (runs with poses)"), negatives=False)
    p.add_argument("--precision", type=float, default=0.99, help="precision to reach (default 0.99)")
    p.add_argument("--keep-model", action="store_true",
                   help="keep the config's matching.fusion_model (default: refit it on these queries)")
    add_acceptance_args(p.add_argument_group("loop-closure acceptance (as evaluate)"), sequence=False)
    p.add_argument("--out", required=True, type=Path, metavar="OUT.yaml", help="the calibrated config to write")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _query_pass(args):
    """``evaluate``'s pass over ``--map`` and ``--queries`` with their ground truth."""
    if len(args.map) != 1 or len(args.poses) > 1 or args.images or args.bag:
        raise UserError("--queries takes one --map, at most one --poses (the queries' positions) and no "
                        "--images / --bag: give runs with poses without --queries instead")
    truths = sum(bool(v) for v in (args.gt, args.same_index, args.same_name, args.poses))
    if truths != 1:
        raise UserError("--queries needs one ground truth: --same-name, --same-index, --gt FILE or --poses CSV "
                        "--radius R")
    query_args = argparse.Namespace(**{**vars(args), "map": args.map[0], "poses": (args.poses or [None])[0]})
    cfg, loc, records, keyframes = evaluate_pass(query_args)
    loc.release()
    return cfg, records, keyframes, f"{len(records)} queries of {args.queries} (map {args.map[0]})"


def _runs_pass(args):
    """One pass over runs with poses (:func:`vlad_localization.calibration.run_records`)."""
    from vlad_localization import evaluation as ev
    from vlad_localization.calibration import run_records
    from vlad_localization.cli.common import load_cli_config
    from vlad_localization.training import TrainingFrames

    given = [f"--{k.replace('_', '-')}" for k in QUERY_ONLY if getattr(args, k)] + (["--tolerance"] * bool(args.tolerance))
    if given:
        raise UserError(f"{', '.join(given)} only apply to --queries: with runs, poses give the ground truth "
                        "(--positive-m)")
    criteria = place_criteria(args)
    try:
        cfg = ev.evaluation_config(load_cli_config(args))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    runs = read_runs(args)
    data = TrainingFrames.from_runs(runs)
    records, keyframes = run_records(args.checkpoint, data, cfg, criteria, args.device, not args.no_progress,
                                     work=args.out.parent)
    return cfg, records, keyframes, f"{len(data)} frames of {', '.join(r.name for r in runs)}"


def run(args) -> int:
    from vlad_localization.calibration import calibrate, summary_line, write_config

    if not 0 < args.precision <= 1:
        raise UserError(f"--precision must be in (0, 1], got {args.precision}")
    cfg, records, keyframes, source = _query_pass(args) if args.queries else _runs_pass(args)
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
            f"on {source}, checkpoint {args.checkpoint}")
    write_config(args.out, args.config, result, note, cfg.loop_closure)
    if args.json:
        args.json.write_text(json.dumps({**result.as_dict(), "config": str(args.out)}, indent=1) + "\n")
    print(summary_line(result))
    print(f"wrote {args.out} (use --config {args.out})")
    if cfg.loop_closure.sequence_length > 0:
        print("note: the threshold was chosen on single frames; with loop_closure.sequence_length > 0 the node "
              "scores with matching.fusion_model's sequence group (docs/loop-closure.md), so check it on a replay",
              file=sys.stderr)
    return 0
