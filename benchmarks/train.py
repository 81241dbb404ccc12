"""Train on Nordland's first 60 % and measure on its last 40 % (places never seen): ``vlad-localization train``.

Nordland (``../shared/datasets/nordland_64x32``): summer and winter are two runs, the place of an
image is its file name, at synthetic positions 10 m apart along the route (place index * 10 m).

1. baseline: ``init-model`` from the ImageNet VGG16 (16 clusters, 128 PCs, 128x256 input, fitted on
   the training part's summer images), as ``benchmarks/fit_fusion.py`` builds its models;
2. train from it on the first 60 % of the route (every ``--train-step``-th place, both runs; frozen
   backbone, CPU), 10 % of those places held out for validation;
3. evaluate both checkpoints on the last 40 % (every 10th place, as fit_fusion: summer map, winter
   queries, same name = same place) with the ``evaluate`` pass: global and fused recall@1 (fused: with
   the preset's fused model, and with each checkpoint's own calibration on the validation places:
   ``train``'s at its end, the baseline's calibrated the same way);
4. ``train``'s calibration (threshold for ``--precision`` on the validation places) applied to the
   test places: the precision and recall it gives there;
5. no loss elsewhere: both checkpoints on Campus loop and Gardens Point (fit_fusion's sets).

Prints one JSON object (recall before/after, ratio, training wall time, the training report).

    python benchmarks/train.py [--epochs 5] [--train-step 2] [--work /tmp/vlad_train_bench]
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
NORDLAND = SHARED / "datasets" / "nordland_64x32"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_conv5_3.pth"
HW = (128, 256)
SPACING_M = 10.0


def _fit_fusion():
    spec = importlib.util.spec_from_file_location("fit_fusion_bench", REPO / "benchmarks" / "fit_fusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nordland_runs(places: range):
    """Summer and winter runs over ``places`` (indices into the sorted file names), posed along a line."""
    from vlad_localization.images import Frame, Pose, list_images, load_rgb
    from vlad_localization.images.frames import NS_PER_S
    from vlad_localization.training import Run

    names = [p.name for p in list_images(NORDLAND / "summer")]
    runs = []
    for season in ("summer", "winter"):
        frames = [Frame(i * NS_PER_S, season, str(NORDLAND / season / names[i]), Pose((i * SPACING_M, 0.0, 0.0)),
                        loader=(lambda p=NORDLAND / season / names[i]: load_rgb(p))) for i in places]
        runs.append(Run(season, frames))
    return runs, names


def evaluate(checkpoint: Path, ref, query, truth, hw, work: Path, ff, records_out: list | None = None) -> dict:
    """fit_fusion's evaluate pass with ``checkpoint``: recall@1 of the global and fused rankings
    (the records are appended to ``records_out``)."""
    from vlad_localization import evaluation as ev
    from vlad_localization.images import iter_folder, list_images
    from vlad_localization.mapdb import build_map
    from vlad_localization.model.encoder import Encoder
    from vlad_localization.pipeline import Localizer

    map_dir, query_dir = ff._link_folder(work / "map_images", ref), ff._link_folder(work / "queries", query)
    cfg = ev.evaluation_config(ff.set_config(hw))
    encoder = Encoder.from_checkpoint(checkpoint, cfg.model, "cpu")
    build_map(work / "map", iter_folder(map_dir), encoder, cfg, [str(map_dir)], progress=False)
    loc = Localizer.from_paths(work / "map", checkpoint, cfg, "cpu")
    records = ev.evaluate_queries(loc, list_images(query_dir), truth, progress=False)
    loc.release()
    if records_out is not None:
        records_out.extend(records)
    model = cfg.matching.fusion_model
    return {name: round(ev.recall_at(records, name, model, ks=(1,))["1"], 4) for name in ("global", "fused")}


def calibration_check(calibration: dict, records, lc) -> dict:
    """``train``'s calibration on its validation places (threshold and refitted fused model) applied to
    the unseen test places: the precision and recall it gives there."""
    from vlad_localization.calibration import acceptance_curve, at_threshold

    out = {"validation": {k: calibration.get(k) for k in ("precision", "recall", "n_queries", "n_queries_with_match",
                                                          "score_threshold", "fusion_model")},
           "precision_target": calibration.get("precision_target")}
    if calibration.get("score_threshold") is not None:
        p, r = at_threshold(acceptance_curve(records, calibration["fusion_model"], lc), calibration["score_threshold"])
        out["test"] = {"precision": round(p, 4), "recall": round(r, 4), "n_queries": len(records)}
    return out


def write_set_config(cfg, path: Path) -> Path:
    """The benchmark's config as a YAML (``base: speed`` + its model and localizer values), the base
    of the config ``train`` writes."""
    import yaml

    model = {k: getattr(cfg.model, k) for k in ("num_clusters", "num_pcs", "image_height", "image_width", "device")}
    data = {"base": "speed", "model": model, "localizer": {"rerank_k": cfg.localizer.rerank_k,
                                                            "top_k": cfg.localizer.top_k}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    from vlad_localization.training import TrainOptions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-step", type=int, default=2, help="every Nth place of the training part")
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument("--margin", type=float, default=TrainOptions.margin)
    parser.add_argument("--negatives", type=int, default=TrainOptions.num_negatives)
    parser.add_argument("--num-pcs", type=int, help="WPCA dimension written (default: the baseline's)")
    parser.add_argument("--whitening", default=TrainOptions.whitening, help="learned | pca (train's --whitening)")
    parser.add_argument("--precision", type=float, default=0.99, help="train's calibration target")
    parser.add_argument("--baseline", type=Path,
                        help="an init-model checkpoint this script built before (copied to --work; no init-model)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vlad_train_bench"))
    parser.add_argument("--sets", nargs="*", default=["gardenspoint_10", "campus_loop_72"])
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate the baseline/trained checkpoints already in --work (no init-model, no training)")
    args = parser.parse_args()

    from vlad_localization import evaluation as ev
    from vlad_localization.calibration import CalibrationRequest, calibrate_runs
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint
    from vlad_localization.training import PlaceCriteria, TrainingFrames, split_by_place, train

    ff = _fit_fusion()
    n = len(list((NORDLAND / "summer").iterdir()))
    cut = int(0.6 * n)
    runs, names = nordland_runs(range(0, cut, args.train_step))
    args.work.mkdir(parents=True, exist_ok=True)
    base, trained = args.work / "baseline.pth.tar", args.work / "trained.pth.tar"
    init_s = train_s = None
    if args.baseline:
        shutil.copyfile(args.baseline, base)
    elif not (args.reuse and base.is_file()):
        t0 = time.perf_counter()
        build_offtheshelf_checkpoint(WEIGHTS, [Path(f.source) for f in runs[0].frames], base, num_clusters=16,
                                     num_pcs=128, patch_sizes=(5,), strides=(1,), image_size=HW, device="cpu", seed=0,
                                     max_pca_samples=5000, kmeans_iterations=25, progress=False)
        init_s = round(time.perf_counter() - t0, 1)
    cfg = ff.set_config(HW)
    options = TrainOptions(epochs=args.epochs, lr=args.lr, margin=args.margin, num_negatives=args.negatives,
                           num_pcs=args.num_pcs, val_fraction=0.1, whitening=args.whitening)
    request = CalibrationRequest(cfg, str(write_set_config(cfg, args.work / "set_config.yaml")), args.precision)
    if args.reuse and trained.is_file():
        report = json.loads((args.work / "trained.pth.tar.train" / "report.json").read_text())
    else:
        t0 = time.perf_counter()
        report = train(base, runs, trained, cfg.model, PlaceCriteria(), options, device="cpu", progress=False,
                       echo=lambda line: print(line, file=sys.stderr), calibration=request)
        train_s = round(time.perf_counter() - t0, 1)
    # the baseline calibrated as train calibrates (same validation frames): its own refitted fused model
    data = TrainingFrames.from_runs(runs)
    _, val = split_by_place(data, options.val_fraction, 2 * PlaceCriteria().negative_m, options.seed)
    base_cal = calibrate_runs(base, data.subset(val), PlaceCriteria(), request, "cpu", progress=False, work=args.work)

    test = [names[i] for i in range(cut, n, 10)]
    ref, query = [NORDLAND / "summer" / m for m in test], [NORDLAND / "winter" / m for m in test]
    truth = ev.truth_same_index(len(test), len(test))
    result = {"nordland_unseen": {"n_queries": len(test)}}
    records = {"before": [], "after": []}
    for label, ckpt in (("before", base), ("after", trained)):
        result["nordland_unseen"][label] = evaluate(ckpt, ref, query, truth, HW, args.work / f"nordland_{label}", ff,
                                                    records[label])
    calibration = {**report.get("calibration", {}), "precision_target": args.precision}
    result["calibrate"] = calibration_check(calibration, records["after"], cfg.loop_closure)
    unseen = result["nordland_unseen"]
    for k in ("global", "fused"):
        b, a = unseen["before"][k], unseen["after"][k]
        unseen[f"{k}_ratio"] = round(a / b, 3) if b else None
    # with the fused model each checkpoint's calibration refitted on the validation places (the config
    # train writes; the baseline calibrated the same way)
    unseen["before"]["fused_calibrated"] = round(ev.recall_at(records["before"], "fused", base_cal.fusion_model,
                                                              ks=(1,))["1"], 4)
    if calibration.get("fusion_model"):
        unseen["after"]["fused_calibrated"] = round(ev.recall_at(records["after"], "fused", calibration["fusion_model"],
                                                                 ks=(1,))["1"], 4)
        b = unseen["before"]["fused_calibrated"]
        unseen["fused_calibrated_ratio"] = round(unseen["after"]["fused_calibrated"] / b, 3) if b else None
    for name in args.sets:
        ref, query, truth, hw = ff.dataset(name)
        result[name] = {label: evaluate(ckpt, ref, query, truth, hw, args.work / f"{name}_{label}", ff)
                        for label, ckpt in (("before", base), ("after", trained))}
    result.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=f"{platform.machine()}, {os.cpu_count()} CPUs "
        "(shared with other jobs)", device="cpu", train_places=len(runs[0].frames), train_frames=2 * len(runs[0].frames),
        epochs=len(report["epochs"]), init_model_s=init_s, train_wall_s=train_s,
        options={k: v for k, v in report.get("options", {}).items() if k in ("lr", "margin", "num_negatives",
                                                                             "num_pcs", "epochs", "batch_size", "whitening")},
        baseline=str(args.baseline) if args.baseline else "built by this run",
        training={k: report.get(k) for k in ("before", "after", "best_epoch", "epochs", "n_train_queries",
                                             "n_val_queries", "whitening")},
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
