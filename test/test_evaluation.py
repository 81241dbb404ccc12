"""``vlad-localization evaluate`` and the fused ranking, on real images (Gardens Point, Tokyo 24/7,
EuRoC, multi-view pairs) with the session's off-the-shelf speed model."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlad_localization import evaluation as ev
from vlad_localization.choices import FUSED_FEATURES
from vlad_localization.cli.main import main

# (map images, query images) of the real pairs; same index = same place
PAIR_SETS = {
    "tokyo_pair": (["ref/tokyo_db.png"], ["query/tokyo_query.jpg"]),
    "euroc_loop_pairs": (["left_img_1.png", "left_img_3.png"], ["left_img_0.png", "left_img_2.png"]),
    "multiview_pairs": (["graf1.png", "leuvenA.jpg", "aero1.jpg", "box.png", "aloeL.jpg"],
                        ["graf3.png", "leuvenB.jpg", "aero3.jpg", "box_in_scene.png", "aloeR.jpg"]),
    "gardenspoint_10": ([f"ref/{i}.jpg" for i in range(10)], [f"query/{i}.jpg" for i in range(10)]),
}


def linked(folder: Path, images: list[Path]) -> Path:
    """``folder`` of symlinks ``00_<name>`` keeping the given order (no image is copied)."""
    folder.mkdir(parents=True)
    for i, src in enumerate(images):
        (folder / f"{i:02d}_{src.name}").symlink_to(src)
    return folder


@pytest.fixture(scope="module")
def set_records(tmp_path_factory, datasets_dir, speed_encoder, speed_checkpoint):
    """The evaluate pass on each real pair set (its map images as the map), fused per the preset."""
    from vlad_localization.config import apply_overrides, load_config
    from vlad_localization.images import iter_folder, list_images
    from vlad_localization.mapdb import build_map
    from vlad_localization.pipeline import Localizer

    cfg = ev.evaluation_config(apply_overrides(load_config("speed"), {
        "model.num_clusters": 16, "model.num_pcs": 128, "model.image_height": 240, "model.image_width": 320,
        "model.device": "cpu"}))
    out = {}
    for name, (refs, queries) in PAIR_SETS.items():
        root = tmp_path_factory.mktemp(name)
        map_dir = linked(root / "map_images", [datasets_dir / name / r for r in refs])
        query_dir = linked(root / "queries", [datasets_dir / name / q for q in queries])
        build_map(root / "map", iter_folder(map_dir), speed_encoder, cfg, [str(map_dir)], progress=False)
        loc = Localizer.from_paths(root / "map", speed_checkpoint, cfg, "cpu")
        out[name] = ev.evaluate_queries(loc, list_images(query_dir), ev.truth_same_index(len(queries), len(refs)),
                                        progress=False)
    return out, cfg.matching.fusion_model


# ----------------------------------------------------------------------------- the fused ranking
def assert_fused_never_below_a_single_ranking(records: dict, model) -> None:
    """Recall@1 of the fused ranking >= that of global, spatial and RANSAC on every set of ``records``."""
    table = {name: {rank: ev.recall_at(recs, rank, model, ks=(1,))["1"] for rank in ev.RANKINGS}
             for name, recs in records.items()}
    print(json.dumps(table))
    for name, row in table.items():
        assert row["fused"] >= max(row["global"], row["spatial"], row["ransac"]), (name, row)


def test_fused_recall_at_1_is_never_below_the_best_single_ranking(set_records):
    assert_fused_never_below_a_single_ranking(*set_records)


def test_fused_scores_are_probabilities_and_same_place_pairs_score_higher(datasets_dir, speed_encoder, speed_config):
    """Each query scored against its set's map images (plus, for the one-place Tokyo set, a Gardens
    Point image), as the pipeline scores a query's candidates: same-place pairs score higher."""
    from vlad_localization.images import load_rgb
    from vlad_localization.matching import PatchMatcher

    assert speed_config.matching.fusion == "fused"
    matcher = None
    for name, (refs, queries) in PAIR_SETS.items():
        paths = [datasets_dir / name / r for r in refs]
        if name == "tokyo_pair":
            paths.append(datasets_dir / "gardenspoint_10" / "ref" / "0.jpg")
        refs = speed_encoder.encode([load_rgb(p) for p in paths])
        matcher = matcher or PatchMatcher.from_config(speed_config, speed_encoder.geometry, refs.grid)
        same, different = [], []
        for i, q in enumerate(queries):
            query = speed_encoder.encode([load_rgb(datasets_dir / name / q)])
            sims = (refs.global_desc.float() @ query.global_desc[0].float()).numpy()
            p = matcher.score({s: t[0] for s, t in query.patches.items()}, refs.patches, sims).probability
            assert ((0.0 <= p) & (p <= 1.0)).all()
            same.append(p[i])
            different.extend(np.delete(p, i))
        assert np.mean(same) > np.mean(different), (name, same, different)
        alone = matcher.pair(query, refs.select(0)).probability  # one pair, as `match` scores it
        assert alone.shape == (1,) and 0.0 <= alone[0] <= 1.0


def test_fused_order_is_what_the_pipeline_ranks_by(set_records):
    records, model = set_records
    for recs in records.values():
        for r in recs:
            p = r.probability(model)
            assert ((0 <= p) & (p <= 1)).all()
            order = r.ranking("fused", model)[:len(p)]
            assert np.all(np.diff(p[[list(r.map_ids[:len(p)]).index(i) for i in order]]) <= 0)


def test_fusion_fit_refitted_on_these_records(set_records):
    """The fit on this session's records: the ranking weights are the constrained optimum of the
    conditional logit (KKT), the fitted model ranks by them, every weight is >= 0, the refitted fused
    ranking is never below the best single ranking on the pair sets, and its acceptance score orders
    each set's proposals at least as well as each of its inputs alone."""
    from vlad_localization import fusion_fit
    from vlad_localization.matching.fusion import rank_weights

    records, _ = set_records
    direction = fusion_fit.ranking_direction(records)
    _, grad, _ = fusion_fit.conditional_logit(fusion_fit.query_groups(records), fusion_fit.RANKING_L2)(direction)
    assert direction.sum() > 0 and (direction >= 0).all()
    assert np.all(np.abs(grad[direction > 0]) < 1e-6) and np.all(grad[direction == 0] > -1e-6), (direction, grad)
    model = fusion_fit.fit(records)
    assert min(model[name] for name in FUSED_FEATURES) >= 0
    ranked = rank_weights(model)
    np.testing.assert_allclose(ranked / ranked.sum(), direction / direction.sum(), atol=1e-3)
    assert_fused_never_below_a_single_ranking(records, model)
    assert_acceptance_never_below_an_input(records, model)


def assert_acceptance_never_below_an_input(records: dict, model) -> None:
    """Per set, recall at 100 % precision and PR AUC of the proposals (fused top-1) ordered by the
    fused score >= those of ordering them by the global similarity, spatial or RANSAC score alone."""
    from vlad_localization import fusion_fit
    from vlad_localization.matching.fusion import rank_weights

    for name, recs in records.items():
        x, correct, n = fusion_fit.proposal_table(recs, rank_weights(model))
        fused = fusion_fit.acceptance_metrics(ev.top1_scores(recs, model)[0], correct, n)
        for k, score in enumerate(fusion_fit.SCORES):
            alone = fusion_fit.acceptance_metrics(x[:, k], correct, n)
            assert fused[0] >= alone[0] - 1e-9 and fused[1] >= alone[1] - 1e-9, (name, score, fused, alone)


def test_dominance_bound_says_when_no_weighting_orders_every_table():
    """Two tables whose proposals two inputs order in opposite ways: each alone is perfect on one
    table, so no linear score of any sign can match both (bound < 0); either table alone can be."""
    from vlad_localization import fusion_fit

    first = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([True, False]), 1)
    second = (np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), np.array([True, False]), 1)
    bound, _ = fusion_fit.dominance_bound([first, second], degrees=5.0)
    assert bound < 0
    for table in (first, second):
        bound, w = fusion_fit.dominance_bound([table], degrees=5.0)
        assert bound == 0.0 and fusion_fit.acceptance_metrics(table[0] @ w, table[1], 1) == (1.0, 1.0)


# ----------------------------------------------------------------------------- the precision-recall curve
def test_precision_recall_curve_on_real_queries(set_records):
    records, model = set_records
    pooled = [r for recs in records.values() for r in recs]
    scores, correct, positives = ev.top1_scores(pooled, model)
    lc = ev.precision_recall(scores, correct, positives)
    curve = np.array(lc["curve"])
    assert np.all(np.diff(curve[:, 0]) > 0)  # thresholds ascending
    assert np.all(np.diff(curve[:, 2]) <= 0)  # recall never rises with the threshold
    assert curve[0, 2] == pytest.approx(correct.sum() / positives)  # the lowest threshold accepts every top-1
    assert 0.0 <= lc["auc"] <= 1.0
    perfect = curve[curve[:, 1] == 1.0]
    assert lc["recall_at_100_precision"] == pytest.approx(perfect[:, 2].max() if len(perfect) else 0.0)
    if lc["threshold_at_100_precision"] is not None:
        accepted = scores >= lc["threshold_at_100_precision"]
        assert correct[accepted].all() and accepted.sum() == round(lc["recall_at_100_precision"] * positives)


def test_precision_recall_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    correct = np.array([True, True, False, True, False])
    lc = ev.precision_recall(scores, correct, num_positive=4)  # one query with a match is missed at top-1
    assert lc["curve"] == [[0.2, 0.6, 0.75], [0.6, 0.75, 0.75], [0.7, 2 / 3, 0.5], [0.8, 1.0, 0.5], [0.9, 1.0, 0.25]]
    assert lc["recall_at_100_precision"] == 0.5 and lc["threshold_at_100_precision"] == 0.8
    assert lc["threshold_at_99_precision"] == 0.8
    assert lc["auc"] == pytest.approx(0.5 * 1.0 + 0.25 * 0.75)


def test_ground_truth_options(tmp_path):
    assert ev.truth_same_index(3, 5, tolerance=1) == [{0, 1}, {0, 1, 2}, {1, 2, 3}]
    assert ev.truth_same_name(["b.png", "x.png"], ["a.png", "b.png", "c.png"], 1) == [{0, 1, 2}, set()]
    gt = np.empty((2, 2), dtype=object)
    gt[0] = [0, [2, 3]]
    gt[1] = [1, []]
    np.save(tmp_path / "ground_truth_new.npy", gt, allow_pickle=True)
    assert ev.truth_vpr_bench(tmp_path / "ground_truth_new.npy", 2, 4) == [{2, 3}, set()]
    with pytest.raises(ValueError, match="outside"):
        ev.truth_vpr_bench(tmp_path / "ground_truth_new.npy", 2, 3)
    assert ev.truth_within_radius([(0, 0, 0), None], [(3, 4, 0), (1, 0, 0), None], 5.0) == [{0, 1}, set()]


# ----------------------------------------------------------------------------- the CLI
def _recall_by_hand(lines: list[dict], k: int) -> float:
    return float(np.mean([str(i) in [str(c["map_id"]) for c in line["candidates"][:k]] for i, line in enumerate(lines)]))


def test_evaluate_matches_recall_computed_from_query_json(tmp_path, datasets_dir, speed_checkpoint, speed_config_file,
                                                          capsys):
    garden = datasets_dir / "gardenspoint_10"
    common = ["--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file)]
    assert main(["build-map", *common, "--images", str(garden / "ref"), "--out", str(tmp_path / "map"),
                 "--no-progress"]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--map", str(tmp_path / "map"), "--queries", str(garden / "query"), *common,
                 "--same-index", "--json", str(out), "--plot", str(tmp_path / "eval.png"), "--examples", "2",
                 "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"n_queries", "rankings", "loop_closure", "timing_ms"} and report["n_queries"] == 10
    assert set(report["rankings"]) == set(ev.RANKINGS)
    assert set(report["loop_closure"]) >= {"auc", "recall_at_100_precision", "threshold_at_100_precision",
                                           "threshold_at_99_precision", "curve"}
    assert (tmp_path / "eval.png").stat().st_size > 10_000 and (tmp_path / "eval_examples.png").is_file()
    capsys.readouterr()
    for flags, ranking in (([], "fused"), (["--no-rerank"], "global")):
        assert main(["query", "--map", str(tmp_path / "map"), *common, "--json", *flags, str(garden / "query")]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [Path(line["query"]).name for line in lines] == [f"{i}.jpg" for i in range(10)]
        for k in ev.RECALL_AT:
            assert report["rankings"][ranking]["recall"][str(k)] == pytest.approx(_recall_by_hand(lines, k)), (ranking, k)


def test_evaluate_user_errors_are_one_line(tmp_path, datasets_dir, speed_checkpoint, speed_config_file, capsys):
    garden = datasets_dir / "gardenspoint_10"
    base = ["evaluate", "--map", str(tmp_path / "nomap"), "--queries", str(garden / "query"),
            "--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file), "--json", str(tmp_path / "e.json")]
    for extra, message in (([ "--poses", "x.csv"], "--radius"), (["--same-index", "--tolerance", "-1"], "--tolerance"),
                           (["--same-index"], "nomap")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):  # argparse: a ground truth option is required
        main(base)
    assert os.path.exists(tmp_path / "e.json") is False


def test_evaluate_with_positions_from_the_map_or_a_csv(tmp_path, datasets_dir, speed_checkpoint, speed_config_file, capsys):
    campus = datasets_dir / "campus_loop_72"
    for folder, ids in (("map", range(6)), ("queries", (30, 70, 71))):
        (tmp_path / folder).mkdir()
        for i in ids:  # copies: the CSV's rows are matched to the images' own paths
            shutil.copy(campus / f"image_{i}.png", tmp_path / folder)
    common = ["--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file)]
    assert main(["build-map", *common, "--images", str(tmp_path / "map"), "--poses", str(campus / "data.csv"),
                 "--out", str(tmp_path / "mapdb"), "--no-progress"]) == 0
    reports = []
    for extra in ([], ["--map-poses", str(campus / "data.csv")]):
        out = tmp_path / f"eval{len(reports)}.json"
        assert main(["evaluate", "--map", str(tmp_path / "mapdb"), "--queries", str(tmp_path / "queries"), *common,
                     "--poses", str(campus / "data.csv"), "--radius", "6", "--json", str(out), "--no-progress",
                     *extra]) == 0
        reports.append(json.loads(out.read_text()))
    # image_71 is 5.5 m from image_0; image_30 and image_70 have no map keyframe within 6 m
    assert reports[0]["n_queries"] == 3 and reports[0]["n_queries_with_match"] == 1
    assert reports[0]["rankings"] == reports[1]["rankings"]
