"""`vlad-localization evaluate`: recall@K of each ranking and the loop-closure precision-recall curve
on the user's own queries (the work is in :mod:`vlad_localization.evaluation`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlad_localization.cli.common import add_acceptance_args, add_config_args, load_cli_config, positive_int
from vlad_localization.cli.main import UserError

EPILOG = """\
Ground truth (one of):
  --gt FILE            VPR-Bench ground_truth_new.npy: rows [query_index, [reference_indices]],
                       queries in the folder's (natural) order, references in the map's order
  --same-index         query i shows map keyframe i (+- --tolerance keyframes)
  --same-name          a query shows the map image with its file name (+- --tolerance keyframes)
  --poses CSV --map-poses CSV --radius R
                       map keyframes within R (CSV units) of the query's position; --map-poses
                       may be left out when the map was built with --poses (CSV layouts: build-map)

--json writes one object (stable keys):
  {"n_queries": 100, "n_queries_with_match": 98,
   "rankings": {"global": {"recall": {"1": r, "5": r, "10": r, "20": r}}, "spatial": ..., "ransac": ...,
                "fused": ...},
   "loop_closure": {"auc", "recall_at_100_precision", "threshold_at_100_precision",
                    "threshold_at_99_precision", "curve": [[threshold, precision, recall], ...]},
   "timing_ms": {"encode", "search", "rerank", "statistic": "median per query"}}
  recall over the queries that have a true match; loop_closure: accept the fused top-1 when its
  score >= threshold, and with --consistency K > 1 (or loop_closure.consistency in --config) when
  the K queries up to it agree as the node requires (precision = true / accepted, recall = true /
  queries with a match);
  thresholds are null where no threshold reaches that precision. Use threshold_at_99_precision
  as loop_closure.score_threshold.

Example:
  vlad-localization build-map --checkpoint model.pth.tar --config speed --images summer/ --out maps/summer
  vlad-localization evaluate --map maps/summer --queries winter/ --checkpoint model.pth.tar \\
      --config speed --same-name --tolerance 1 --json eval.json --plot eval.png --examples 6
"""


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="recall@K and loop-closure precision/recall on your own queries",
                       description="Measure recall@1/5/10/20 of the global, spatial, RANSAC and fused rankings\n"
                                   "and the precision-recall curve of the fused loop-closure threshold on a map\n"
                                   "and a folder of query images with ground truth.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_query_args(p)
    p.add_argument("--json", required=True, metavar="OUT.json", help="the report (keys below)")
    p.add_argument("--plot", metavar="OUT.png", help="recall@K of each ranking and the PR curve")
    p.add_argument("--examples", type=positive_int, metavar="N",
                   help="OUT_examples.png beside --plot (else beside --json): the N worst failures "
                        "(query, wrong fused top-1, true match), most confident first")
    g = p.add_argument_group("loop-closure acceptance (the node's rule; the queries are taken as one run in "
                             "their order)")
    add_acceptance_args(g, sequence=False)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_query_args(p, runs: bool = False) -> None:
    """The map, queries, checkpoint, config and ground-truth options (of ``evaluate`` and ``calibrate``).
    ``runs`` (calibrate): the queries are optional, as runs with poses may replace them; the caller adds
    ``--map`` and ``--poses`` (repeatable, :func:`vlad_localization.cli.train.add_run_args`)."""
    if not runs:
        p.add_argument("--map", required=True, help="map directory (build-map)")
    p.add_argument("--queries", required=not runs, help="folder of query images")
    p.add_argument("--checkpoint", required=True, help="the checkpoint the map was built with")
    add_config_args(p)
    truth = p.add_mutually_exclusive_group(required=not runs)
    truth.add_argument("--gt", metavar="FILE", help="VPR-Bench ground_truth_new.npy")
    truth.add_argument("--same-index", action="store_true", help="query i <-> map keyframe i")
    truth.add_argument("--same-name", action="store_true", help="query <-> map image of the same file name")
    if not runs:
        truth.add_argument("--poses", metavar="CSV", help="query positions (with --radius)")
    p.add_argument("--tolerance", type=int, default=0, metavar="N",
                   help="--same-index/--same-name: also accept the N map keyframes either side (default 0)")
    p.add_argument("--map-poses", metavar="CSV", help="map image positions (default: the map's own poses)")
    p.add_argument("--radius", type=float, metavar="R", help="--poses: same place within R (CSV units)")


def _check_args(args) -> None:
    if args.tolerance < 0:
        raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
    if args.tolerance and not (args.same_index or args.same_name):
        raise UserError("--tolerance applies to --same-index / --same-name")
    if args.poses and (args.radius is None or args.radius <= 0):
        raise UserError("--poses needs --radius R > 0 (same place within R)")
    if (args.radius is not None or args.map_poses) and not args.poses:
        raise UserError("--radius / --map-poses apply to --poses")
    if not Path(args.queries).is_dir():
        raise UserError(f"--queries {args.queries} is not a folder of images")


def ground_truth(args, query_paths, keyframes) -> list[set[int]]:
    """The true map ids of each query from the chosen ground-truth option."""
    from vlad_localization import evaluation as ev
    from vlad_localization.images.folder import read_poses_csv

    if args.gt:
        return ev.truth_vpr_bench(args.gt, len(query_paths), len(keyframes))
    if args.same_index:
        return ev.truth_same_index(len(query_paths), len(keyframes), args.tolerance)
    if args.same_name:
        return ev.truth_same_name([p.name for p in query_paths], [Path(k.source).name for k in keyframes],
                                  args.tolerance)
    rows = read_poses_csv(args.poses, args.queries)
    by_name = {path.name: row.pose for path, row in rows.items()}
    query_xy = [_position(by_name.get(p.name)) for p in query_paths]
    if args.map_poses:
        sources = [Path(k.source) for k in keyframes]
        folder = sources[0].parent if sources and sources[0].parent.is_dir() else Path(args.map_poses).parent
        map_rows = {path.name: row.pose for path, row in read_poses_csv(args.map_poses, folder).items()}
        map_xy = [_position(map_rows.get(s.name)) for s in sources]
    else:
        map_xy = [k.position for k in keyframes]
    if all(p is None for p in map_xy):
        raise UserError("no map keyframe has a position: give --map-poses CSV (or build the map with --poses)")
    if all(p is None for p in query_xy):
        raise UserError(f"--poses {args.poses} gives no position to any image of {args.queries}")
    return ev.truth_within_radius(query_xy, map_xy, args.radius)


def _position(pose):
    return None if pose is None else tuple(pose.position)


def evaluate_pass(args):
    """(evaluation config, localizer, records, map keyframes) of the one pass over ``--queries`` (:func:`add_query_args`);
    the caller releases the localizer."""
    from vlad_localization import evaluation as ev
    from vlad_localization.images import list_images
    from vlad_localization.pipeline import Localizer

    _check_args(args)
    try:
        cfg = ev.evaluation_config(load_cli_config(args))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    query_paths = list_images(args.queries)
    if not query_paths:
        raise UserError(f"--queries {args.queries} holds no images")
    loc = Localizer.from_paths(args.map, args.checkpoint, cfg, args.device)
    try:
        keyframes = loc.map.keyframes(list(range(loc.map.size)))
        truth = ground_truth(args, query_paths, keyframes)
        records = ev.evaluate_queries(loc, query_paths, truth, progress=not args.no_progress)
    except BaseException:
        loc.release()
        raise
    return cfg, loc, records, keyframes


def run(args) -> int:
    from vlad_localization import evaluation as ev

    cfg, loc, records, keyframes = evaluate_pass(args)
    try:
        model = cfg.matching.fusion_model
        report = ev.summarize(records, model, cfg.loop_closure, keyframes)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        if args.plot:
            from vlad_localization.evaluation_plots import plot_report

            plot_report(report, args.plot)
        if args.examples:
            from vlad_localization.evaluation_plots import plot_examples

            beside = Path(args.plot or args.json)
            plot_examples(ev.worst_failures(records, model, args.examples), loc.map,
                          beside.with_name(beside.stem + "_examples.png"))
    finally:
        loc.release()
    _print_summary(report, args)
    return 0


def _print_summary(report: dict, args) -> None:
    print(f"{report['n_queries']} queries ({report['n_queries_with_match']} with a true match in the map)")
    print(f"  {'ranking':<8} " + " ".join(f"{'R@' + k:>6}" for k in report["rankings"]["global"]["recall"]))
    for name, row in report["rankings"].items():
        print(f"  {name:<8} " + " ".join(f"{v:>6.3f}" for v in row["recall"].values()))
    lc = report["loop_closure"]
    t99 = "none" if lc["threshold_at_99_precision"] is None else f"{lc['threshold_at_99_precision']:.3f}"
    print(f"  loop closure (fused top-1): AUC {lc['auc']:.3f}, recall at 100 % precision "
          f"{lc['recall_at_100_precision']:.3f}, threshold for 99 % precision {t99}")
    print(f"  report: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
