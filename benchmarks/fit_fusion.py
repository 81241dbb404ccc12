"""Fit the ``fused`` ranking's logistic model on the shared real datasets and measure it.

For every set of ``../shared/datasets`` with ground truth it builds an off-the-shelf model
(ImageNet VGG16 + k-means NetVLAD + WPCA fitted on the set's map images, 16 clusters, 128 PCs,
patch size 5), a map of the set's map images, and runs the ``evaluate`` pass (one encode, search
and patch match per query; both matchers' scores of the re-ranked head). The evidence of every
re-ranked candidate (``choices.FUSED_FEATURES``: global similarity, spatial and RANSAC scores and
their gaps to the query's best re-ranked candidate; label: same place) of all sets is pooled (each
set weighted equally) to fit P(same place) = sigmoid(bias + w . features) in two steps, every weight
non-negative (more evidence never lowers the probability):

1. the ranking: the weights of the three scores that rank each query's true match first, by an
   L2-regularised conditional logit (the softmax over a query's re-ranked candidates should pick its
   true match; queries with no true or no wrong candidate there carry no information);
2. the calibration: the bias, the scale and how each score's weight splits between its absolute
   value and its gap (the two rank alike within a query, but not across queries or for a single
   pair), by L2-regularised logistic regression on every candidate, with the ranking of step 1 kept.

A per-candidate logistic fit alone lets the many easy negatives and the true matches that no weighting
puts first set the ranking (it lost a Gardens Point query to the global ranking in-sample). It
prints one JSON object: the coefficients, per set recall@1 of the four rankings with the model fitted
on all sets (in-sample) and leave-one-set-out (the set itself left out of the fit: the honest number),
and the fused top-1 threshold for 99 % precision on the pooled queries, rounded down. With ``--runs``
(the runs ``benchmarks/loop_closure.py`` cached) the single-frame runs' proposals must be ordered
well too, the runs with sequence scoring fit the ``sequence_*`` / ``contrast_*`` models
(``fusion_fit.fit_sequence``), and ``acceptance_runs`` compares the fused score with each input
along every run. ``--write`` stores the coefficients and that threshold in the three presets.

    python benchmarks/fit_fusion.py [--sets gardenspoint_10 ...] [--cache /tmp/vlad_fit_fusion] [--write]

Sets (map / queries, ground truth, network input HxW): nordland_64x32 (summer / winter, every 10th
image of the 3576, same place = same name, 128x256), gardenspoint_10 (night ref / day query, same
index, 240x320), campus_loop_72 (image_0-35 / image_36-71, within 6 m by data.csv, 240x320),
tokyo_pair, euroc_loop_pairs (left_img_1, 3 / left_img_0, 2), multiview_pairs (graf1, leuvenA,
aero1, box, aloeL / graf3, leuvenB, aero3, box_in_scene, aloeR), same index, 240x320.
Map and query folders are symlinks under --cache (no image is copied); records are cached there
too (``--refresh`` recomputes them).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
from pathlib import Path

import numpy as np

from vlad_localization import evaluation as ev
from vlad_localization import fusion_fit
from vlad_localization.choices import FUSED_FEATURES, RANSAC_BACKENDS
from vlad_localization.config import apply_overrides, load_config, preset_path
from vlad_localization.images import iter_folder, list_images
from vlad_localization.matching.fusion import rank_weights

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
DATA = SHARED / "datasets"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_conv5_3.pth"
SMALL = (240, 320)
RADIUS_M = 6.0
THRESHOLD_NOTE = "fused top-1 threshold for 99 % precision on the shared datasets (benchmarks/fit_fusion.py)"
PLACEHOLDER = {"bias": 0.0, **{name: 1.0 for name in FUSED_FEATURES}}  # records do not depend on it


def _pairs(folder: str, names: list[tuple[str, str]]):
    return [DATA / folder / m for m, _ in names], [DATA / folder / q for _, q in names]


def dataset(name: str):
    """(map images, query images, ground truth per query as map indices, network input (H, W))."""
    if name == "nordland_64x32":
        summer = list_images(DATA / name / "summer")[::10]
        return summer, [DATA / name / "winter" / p.name for p in summer], ev.truth_same_index(len(summer), len(summer)), (128, 256)
    if name == "gardenspoint_10":
        ref, query = list_images(DATA / name / "ref"), list_images(DATA / name / "query")
        return ref, query, ev.truth_same_index(len(query), len(ref)), SMALL
    if name == "campus_loop_72":
        with open(DATA / name / "data.csv", newline="") as fh:
            xy = {row[0]: (float(row[1]), float(row[2]), 0.0) for row in csv.reader(fh) if row}
        images = list_images(DATA / name)
        ref, query = images[:36], images[36:]
        truth = ev.truth_within_radius([xy[p.name] for p in query], [xy[p.name] for p in ref], RADIUS_M)
        return ref, query, truth, SMALL
    pairs = {
        "tokyo_pair": [("ref/tokyo_db.png", "query/tokyo_query.jpg")],
        "euroc_loop_pairs": [("left_img_1.png", "left_img_0.png"), ("left_img_3.png", "left_img_2.png")],
        "multiview_pairs": [("graf1.png", "graf3.png"), ("leuvenA.jpg", "leuvenB.jpg"), ("aero1.jpg", "aero3.jpg"),
                            ("box.png", "box_in_scene.png"), ("aloeL.jpg", "aloeR.jpg")],
    }[name]
    ref, query = _pairs(name, pairs)
    return ref, query, ev.truth_same_index(len(query), len(ref)), SMALL


SETS = ("nordland_64x32", "gardenspoint_10", "campus_loop_72", "tokyo_pair", "euroc_loop_pairs", "multiview_pairs")


def _link_folder(folder: Path, images) -> Path:
    """``folder`` of symlinks ``0000_<name>`` to ``images`` (natural order = the given order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(images):
        link = folder / f"{i:04d}_{src.name}"
        if not link.is_symlink():
            link.symlink_to(src.resolve())
    return folder


def set_config(image_hw, ransac_backend: str = "auto"):
    cfg = load_config("speed")
    overrides = {"model.num_clusters": 16, "model.num_pcs": 128, "model.image_height": image_hw[0],
                 "model.image_width": image_hw[1], "model.device": "cpu", "localizer.rerank_k": 10,
                 "localizer.top_k": 20, "matching.ransac_backend": ransac_backend}
    if not cfg.matching.fusion_model:
        overrides["matching.fusion_model"] = PLACEHOLDER
    return apply_overrides(cfg, overrides)


def run_set(name: str, cache: Path, refresh: bool, ransac_backend: str = "auto") -> list[ev.QueryRecord]:
    """The evaluate pass on one set (cached as JSON under ``cache/name``)."""
    from vlad_localization.mapdb import build_map
    from vlad_localization.model.encoder import Encoder
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint
    from vlad_localization.pipeline import Localizer

    out = cache / name
    records_file = out / "records.json"
    if records_file.is_file() and not refresh:
        return ev.records_from_json(json.loads(records_file.read_text()))
    ref, query, truth, hw = dataset(name)
    map_dir, query_dir = _link_folder(out / "map_images", ref), _link_folder(out / "queries", query)
    checkpoint = out / "model.pth.tar"
    if refresh or not checkpoint.is_file():
        build_offtheshelf_checkpoint(WEIGHTS, list_images(map_dir), checkpoint, num_clusters=16, num_pcs=128,
                                     patch_sizes=(5,), strides=(1,), image_size=hw, device="cpu", seed=0,
                                     max_pca_samples=5000, kmeans_iterations=25, progress=False)
    cfg = ev.evaluation_config(set_config(hw, ransac_backend))
    encoder = Encoder.from_checkpoint(checkpoint, cfg.model, "cpu")
    build_map(out / "map", iter_folder(map_dir), encoder, cfg, [str(map_dir)], progress=False)
    loc = Localizer.from_paths(out / "map", checkpoint, cfg, "cpu")
    records = ev.evaluate_queries(loc, list_images(query_dir), truth, progress=False)
    records_file.write_text(json.dumps(ev.records_to_json(records)))
    return records


def write_presets(model: dict, threshold: float) -> None:
    """Replace the ``fusion_model:`` and ``score_threshold:`` lines of the three presets."""
    for name in ("performance", "speed", "storage"):
        path = preset_path(name)
        text = path.read_text()
        text = re.sub(r"(?m)^  fusion_model: .*$", "  fusion_model: " + json.dumps(model).replace('"', ""), text)
        text = re.sub(r"(?m)^  score_threshold: .*$", f"  score_threshold: {threshold}  # {THRESHOLD_NOTE}", text)
        path.write_text(text)


def acceptance_table(records, model) -> dict:
    """Recall at 100 % precision and PR AUC of the proposals (each query's fused top-1) accepted by
    the fused score and by each of its inputs alone."""
    x, correct, n = fusion_fit.proposal_table(records, rank_weights(model))
    scores = {"fused": ev.top1_scores(records, model)[0], **{name: x[:, k] for k, name in enumerate(fusion_fit.SCORES)}}
    return {name: dict(zip(("recall_at_100_precision", "auc"),
                           (round(v, 4) for v in fusion_fit.acceptance_metrics(s, correct, n))))
            for name, s in scores.items()}


def run_acceptance(frames, model, contrast: bool) -> dict:
    """Recall at 100 % precision and PR AUC of what the node's rule accepts along a run (consistency
    k = 1 and 3), by the fused score and by each input alone (``evaluation.closure_curve``)."""
    from loop_closure import GAP_S, _frames_from

    frames = _frames_from(frames, model, contrast)
    out = {}
    for k in (1, 3):
        for score in ev.ACCEPTANCE_SCORES:
            summary = ev.closure_curve(frames, {"min_time_gap_s": GAP_S, "consistency": k}, score)
            if np.isfinite([summary["auc"]]).all() and (score != "sequence_similarity" or summary["n_frames"]):
                out.setdefault(f"k{k}", {})["fused" if score == "score" else score] = {
                    "recall_at_100_precision": round(summary["recall_at_100_precision"], 4),
                    "auc": round(summary["auc"], 4)}
    return out


def cached_runs(folder: Path) -> dict[str, list]:
    """The runs ``benchmarks/loop_closure.py`` cached under ``folder`` (``*/frames_L*_w*.json``: rows
    of each frame's candidates with their evidence), by name."""
    return {f"{path.parent.name}/{path.stem}": json.loads(path.read_text())
            for path in sorted(folder.glob("*/frames_L*_w*.json"))}


def contrasted(run_name: str) -> bool:
    """Whether a cached run (``.../frames_L<L>_w<window>``) scored sequences with SeqSLAM contrast."""
    return not run_name.endswith("_w0")


def proposal_tables(rows_by_run: dict, model) -> list[tuple]:
    """Single-frame proposal tables (:func:`fusion_fit.proposal_table` of a run) of the runs without
    sequence scoring."""
    from loop_closure import GAP_S, _frames_from

    tables = []
    for rows in rows_by_run.values():
        frames = _frames_from(rows, model)
        evidence = [(x[:, :3], y) for x, y in fusion_fit.run_evidence(frames, GAP_S)]
        best = [(x, y, int(np.argmax(x @ rank_weights(model)))) for x, y in evidence if len(x)]
        tables.append((np.array([x[i] for x, _, i in best]).reshape(-1, 3), np.array([y[i] for _, y, i in best], bool),
                       sum(bool(f.positives) for f in frames)))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--cache", default="/tmp/vlad_fit_fusion", help="maps, models and records (default %(default)s)")
    parser.add_argument("--refresh", action="store_true", help="recompute cached records")
    parser.add_argument("--write", action="store_true", help="store the coefficients and threshold in config/*.yaml")
    parser.add_argument("--runs", type=Path, metavar="DIR",
                        help="the runs benchmarks/loop_closure.py cached in DIR: the single-frame ones' proposals "
                             "must also be ordered well; the ones with sequence scoring fit the sequence weights "
                             "(fusion_fit.fit_sequence)")
    parser.add_argument("--ransac-backend", default="auto", choices=list(RANSAC_BACKENDS),
                        help="matching.ransac_backend of the evaluate pass (records are cached per --cache: "
                             "use one cache per backend)")
    args = parser.parse_args()
    per_set = {name: run_set(name, Path(args.cache), args.refresh, args.ransac_backend) for name in args.sets}
    from loop_closure import GAP_S, _frames_from

    runs = cached_runs(args.runs) if args.runs else {}
    single = {name: rows for name, rows in runs.items() if name.endswith("_L0_w0")}
    sequence = {name: rows for name, rows in runs.items() if name not in single}
    current = load_config("speed").matching.fusion_model
    extra = proposal_tables(single, current)
    model = fusion_fit.fit(per_set, extra)
    for kind, contrast in (("sequence", False), ("contrast", True)):
        rows = [rows for name, rows in sequence.items() if contrasted(name) == contrast]
        if rows:
            frames = [_frames_from(r, model, contrast) for r in rows]
            model = fusion_fit.fit_sequence(model, frames, GAP_S, kind)
    table = {}
    for name, records in per_set.items():
        held_out = fusion_fit.fit({k: v for k, v in per_set.items() if k != name}, extra) \
            if len(per_set) > 1 else model
        row = {rank: ev.recall_at(records, rank, model, ks=(1,))["1"] for rank in ev.RANKINGS}
        row["fused_leave_one_set_out"] = ev.recall_at(records, "fused", held_out, ks=(1,))["1"]
        row["n_queries_with_match"] = sum(bool(r.positives) for r in records)
        table[name] = row
    threshold, _ = fusion_fit.threshold_at_precision(per_set, model, 0.99)
    proposals = [fusion_fit.proposal_table(records, rank_weights(model)) for records in per_set.values()] + extra
    accept = np.array([model[name] for name in fusion_fit.SCORES])
    bound, best = fusion_fit.dominance_bound(proposals)
    dominance = {"note": "single-frame acceptance on the six sets and the single-frame runs' proposals: the smallest "
                         "(metric by the score) - (best metric of one input alone) over tables and both metrics, "
                         "for the fitted model and for the best linear weighting of any sign (2-degree grid)",
                 "fitted": round(fusion_fit.dominance_margin(proposals, accept), 4), "best_linear": round(bound, 4),
                 "best_linear_direction": [round(float(v), 3) for v in best]}
    pooled = [r for records in per_set.values() for r in records]
    loop = ev.precision_recall(*ev.top1_scores(pooled, model))
    print(json.dumps({"model": model, "recall_at_1": table,
                      "acceptance": {name: acceptance_table(records, model) for name, records in per_set.items()},
                      "acceptance_runs": {name: run_acceptance(rows, model, contrasted(name))
                                          for name, rows in runs.items()},
                      "dominance": dominance, "threshold_at_99_precision": threshold,
                      "pooled_auc": round(loop["auc"], 4), "pooled_recall_at_100_precision": loop["recall_at_100_precision"],
                      "cache": args.cache, "ransac_backend": args.ransac_backend}, indent=1))
    if args.write:
        if threshold is None:
            raise SystemExit("no threshold reaches 99 % precision: presets left unchanged")
        write_presets(model, threshold)


if __name__ == "__main__":
    main()
