"""The per-frame loop-closure detector on real data: campus_loop_72 replayed in ``loop_closure`` mode
through ``vlad-localization replay --images --poses`` (the real revisit 71 -> 0/1, no closure inside
the time gap, min_travel_m, the run saved as a map), and a Nordland summer stretch followed by the
same stretch in winter as one run (closures at the revisits, precision reported)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from conftest import SPEED_IMAGE_SIZE
from vlad_localization.mapdb import Store

S = 10**9
GAP_S = 30.0
TRAVEL_M = 20.0


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """The speed preset at the test checkpoint's 240x320, on the CPU, absolute patch scores (the
    thresholds below are patch scores, whatever the shipped fusion)."""
    path = tmp_path_factory.mktemp("detector") / "speed_small.yaml"
    height, width = SPEED_IMAGE_SIZE
    path.write_text(yaml.safe_dump({"base": "speed", "model": {"image_height": height, "image_width": width,
                                                              "device": "cpu"},
                                    "matching": {"fusion": "absolute"}}))
    return path


@pytest.fixture(scope="module")
def campus_replay(tmp_path_factory, datasets_dir, speed_checkpoint, small_config):
    """``replay --images campus_loop_72 --poses data.csv --mode loop_closure`` (stamps i s), every
    frame a keyframe, score threshold 0 (every confident-or-not revisit candidate is reported)."""
    from vlad_localization.cli.main import main as cli

    work = tmp_path_factory.mktemp("campus_replay")
    images = datasets_dir / "campus_loop_72"
    out, saved = work / "run.jsonl", work / "run_map"
    rc = cli(["replay", "--images", str(images), "--poses", str(images / "data.csv"), "--mode", "loop_closure",
              "--checkpoint", str(speed_checkpoint), "--config", str(small_config), "--score-threshold", "0",
              "--min-gap", str(GAP_S), "--min-travel", str(TRAVEL_M), "--save-map", str(saved), "--out", str(out)])
    assert rc == 0
    xy = np.loadtxt(images / "data.csv", delimiter=",", usecols=(1, 2))
    travel = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    return [json.loads(line) for line in out.read_text().splitlines()], saved, xy, travel


def test_campus_revisit_is_closed_with_the_right_stamp(campus_replay):
    records, _, xy, _ = campus_replay
    assert [round(r["query_stamp"]) for r in records] == list(range(72))
    last = records[71]
    assert last["loop_closure"] is not None, "image_71 revisits image_0: no loop closure"
    t_query, t_match = last["loop_closure"]
    match = round(t_match)
    # image_0 (5.5 m away, same heading) or image_1 (8.6 m): the only places of the loop within 10 m
    assert t_query == 71.0 and match in (0, 1) and np.hypot(*(xy[71] - xy[match])) < 10.0
    assert last["loop_closure_match"]["source"] == 1 and last["loop_closure_match"]["map_id"] == match
    assert last["candidates"][last["loop_closure_match"]["rank"]]["map_stamp"] == t_match


def test_no_closure_or_candidate_inside_the_time_gap_or_travel(campus_replay):
    records, _, _, travel = campus_replay
    closures = [r["loop_closure"] for r in records if r["loop_closure"]]
    assert closures and all(abs(q - m) >= GAP_S for q, m in closures)
    for r in records:
        i = round(r["query_stamp"])
        for c in r["candidates"]:
            assert c["source"] == 1  # loop_closure mode: this run's keyframes only
            j = round(c["map_stamp"])
            assert i - j >= GAP_S, (i, j)  # never a keyframe of the last 30 s
            assert travel[i] - travel[j] >= TRAVEL_M - 1e-6, (i, j)  # nor of the last 20 m travelled
    assert all(not r["candidates"] for r in records[:int(GAP_S)])  # nothing old enough yet


def test_every_frame_becomes_a_keyframe_and_the_run_saves_as_a_map(campus_replay, speed_encoder):
    from vlad_localization.mapdb import MapDatabase

    records, saved, xy, _ = campus_replay
    assert [r["keyframe"] for r in records] == list(range(72))  # no keyframe thresholds set
    with MapDatabase.open(saved, identity=speed_encoder.identity()) as db:
        assert db.size == 72
        kf = db.keyframe(71)
        assert kf.stamp_ns == 71 * S and np.allclose(kf.position[:2], xy[71]) and kf.extra["camera"] == 0
        assert db.thumbnail(5) is not None


def test_calibrated_on_its_own_run_the_campus_closes_only_its_revisit(tmp_path, datasets_dir, speed_checkpoint):
    """The workflow the docs give for a threshold that fits the robot: `calibrate --images --poses
    --keep-model` on the run itself (every frame a query against the rest of the run, same place
    within 10 m), then `replay` with the config it wrote, the shipped fused model: the one real
    revisit closes (71 -> 0/1) and nothing else does. (The presets' threshold, fitted on the
    pooled shared sets, closes nothing here.)"""
    from vlad_localization.cli.main import main as cli
    from vlad_localization.config import load_config

    images = datasets_dir / "campus_loop_72"
    height, width = SPEED_IMAGE_SIZE
    config = tmp_path / "speed_small_fused.yaml"
    config.write_text(yaml.safe_dump({"base": "speed", "model": {"image_height": height, "image_width": width,
                                                                "device": "cpu"}}))
    common = ["--images", str(images), "--poses", str(images / "data.csv"), "--checkpoint", str(speed_checkpoint)]
    assert cli(["calibrate", *common, "--config", str(config), "--keep-model", "--min-gap-s", str(GAP_S),
                "--positive-m", "10", "--precision", "0.99", "--out", str(tmp_path / "cal.yaml"),
                "--json", str(tmp_path / "cal.json"), "--no-progress"]) == 0
    calibrated = json.loads((tmp_path / "cal.json").read_text())
    written = yaml.safe_load((tmp_path / "cal.yaml").read_text())["loop_closure"]["score_threshold"]
    assert calibrated["precision"] == 1.0 and calibrated["recall"] > 0
    assert written == pytest.approx(calibrated["score_threshold"])
    assert written < load_config("speed").loop_closure.score_threshold
    assert cli(["replay", *common, "--config", str(tmp_path / "cal.yaml"), "--mode", "loop_closure",
                "--min-gap", str(GAP_S), "--min-travel", str(TRAVEL_M), "--out", str(tmp_path / "run.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    closures = [(round(r["query_stamp"]), round(r["loop_closure"][1])) for r in records if r["loop_closure"]]
    print(f"campus calibrated on itself: threshold {written:.3f}, closures {closures}")
    assert closures and closures[-1][0] == 71 and all(q in (70, 71) and m in (0, 1) for q, m in closures), closures


def test_nordland_summer_then_winter_closes_at_the_revisits(tmp_path, datasets_dir, speed_checkpoint, small_config):
    """40 summer frames (stamps 0..39 s) then the same 40 places in winter (100..139 s), one run:
    each winter frame may close a loop with a summer keyframe; correct = within +-2 frames."""
    from vlad_localization.config import apply_overrides, load_config
    from vlad_localization.detector import LoopClosureDetector
    from vlad_localization.images import load_rgb

    first, n, tolerance = 1000, 40, 2
    cfg = apply_overrides(load_config(small_config), {"loop_closure.mode": "loop_closure",
                                                      "loop_closure.min_time_gap_s": GAP_S,
                                                      "loop_closure.score_threshold": 0.1})
    det = LoopClosureDetector.from_config(cfg, speed_checkpoint)
    names = [f"images-{(first + i) * 10:05d}.png" for i in range(n)]
    try:
        for i, name in enumerate(names):
            res = det.process(i * S, load_rgb(datasets_dir / "nordland_64x32" / "summer" / name))
            assert res.keyframe == i and res.loop_closure is None  # nothing 30 s old yet in the summer stretch
        closures, top1 = [], []
        for i, name in enumerate(names):
            res = det.process((100 + i) * S, load_rgb(datasets_dir / "nordland_64x32" / "winter" / name))
            top1.append(abs(res.candidates[0].map_id - i) <= tolerance)
            if res.loop_closure is not None:
                closures.append(abs(round(res.loop_closure.match_stamp_ns / S) - i) <= tolerance)
    finally:
        det.release()
    precision = sum(closures) / max(len(closures), 1)
    print(f"nordland revisit: {len(closures)} closures, precision {precision:.2f}, "
          f"top-1 within +-{tolerance} frames {sum(top1)}/{n}")
    assert sum(top1) >= n // 3  # the revisited place leads the run's search for many winter frames
    assert len(closures) >= 4 and precision >= 0.75  # measured: 6 closures, precision 0.83


def test_modes_that_search_a_map_need_one(speed_checkpoint, small_config):
    from vlad_localization.config import apply_overrides, load_config
    from vlad_localization.detector import LoopClosureDetector

    for mode in ("localize", "both"):
        cfg = apply_overrides(load_config(small_config), {"loop_closure.mode": mode})
        with pytest.raises(ValueError, match="needs a prebuilt map"):
            LoopClosureDetector.from_config(cfg, speed_checkpoint)


def test_both_mode_tags_each_candidate_with_its_map(tmp_path, datasets_dir, speed_checkpoint, small_config):
    """A prebuilt map of campus frames 0..9 and a run replaying frames 0..9 again 100 s later:
    candidates come from both maps, each says which (source 0 / 1), and the run's own are >= 30 s old."""
    from vlad_localization.cli.main import main as cli
    from vlad_localization.config import apply_overrides, load_config
    from vlad_localization.detector import LoopClosureDetector
    from vlad_localization.images import iter_folder

    images = datasets_dir / "campus_loop_72"
    sub = tmp_path / "first10"
    sub.mkdir()
    for i in range(10):
        (sub / f"image_{i}.png").symlink_to(images / f"image_{i}.png")
    assert cli(["build-map", "--checkpoint", str(speed_checkpoint), "--config", str(small_config),
                "--images", str(sub), "--out", str(tmp_path / "map"), "--no-progress"]) == 0
    cfg = apply_overrides(load_config(small_config), {"loop_closure.mode": "both", "loop_closure.min_time_gap_s": 3.0,
                                                      "loop_closure.score_threshold": 0.0})
    det = LoopClosureDetector.from_config(cfg, speed_checkpoint, tmp_path / "map")
    try:
        results = [det.process((100 + f.stamp_ns // S) * S, f.rgb) for f in iter_folder(sub)]
    finally:
        det.release()
    last = results[-1]
    sources = {c.store for c in last.candidates}
    assert sources == {0, 1}
    best_map = next(c for c in last.candidates if c.store == Store.PREBUILT)
    assert best_map.map_id == 9 and math.isfinite(best_map.patch_score)  # the same image in the prebuilt map
    for r in results:
        assert all(c.store == Store.PREBUILT or r.stamp_ns - c.stamp_ns >= 3 * S for c in r.candidates)
    assert [r.keyframe for r in results] == list(range(10))


@pytest.fixture(scope="module")
def nordland_runs(datasets_dir, speed_checkpoint, small_config):
    """The 40-place Nordland summer-then-winter run of the test above, every frame encoded once,
    through the detector with the presets' fused ranking at threshold 0, frame by frame and with
    sequence scoring (L = 10) and consistency (k = 3): {(L, k): (right proposals of winter frames,
    closure precision, closures, the frames as evaluation.FrameProposals)}."""
    from vlad_localization import evaluation as ev
    from vlad_localization.config import apply_overrides, load_config
    from vlad_localization.detector import LoopClosureDetector
    from vlad_localization.images import load_rgb

    first, n, tolerance = 1000, 40, 2
    names = [f"images-{(first + i) * 10:05d}.png" for i in range(n)]
    frames = [(i * S, datasets_dir / "nordland_64x32" / "summer" / name) for i, name in enumerate(names)]
    frames += [((100 + i) * S, datasets_dir / "nordland_64x32" / "winter" / name) for i, name in enumerate(names)]
    base = apply_overrides(load_config(small_config), {"loop_closure.mode": "loop_closure", "loop_closure.min_time_gap_s":
                                                       GAP_S, "loop_closure.score_threshold": 0.0,
                                                       "matching.fusion": "fused"})  # the presets' ranking
    descriptors = None
    outcome = {}
    for length, k in ((0, 1), (10, 1), (10, 3)):
        cfg = apply_overrides(base, {"loop_closure.sequence_length": length, "loop_closure.consistency": k})
        det = LoopClosureDetector.from_config(cfg, speed_checkpoint)
        try:
            if descriptors is None:
                descriptors = [det.localizer.encode(load_rgb(path)) for _, path in frames]
            right_top, accepted, proposals = 0, [], []
            for i, ((stamp, path), desc) in enumerate(zip(frames, descriptors)):
                res = det.process(stamp, load_rgb(path), descriptors=desc)
                place = i - n
                near = range(max(0, place - tolerance), place + tolerance + 1)
                truth = set() if i < n else {(Store.RUN, j) for j in near}
                proposals.append(ev.FrameProposals(stamp, 0, res.candidates, truth))
                if i < n:
                    continue
                proposal = res.candidates[res.decision.rank] if res.decision.rank is not None else None
                right_top += proposal is not None and abs(proposal.map_id - place) <= tolerance
                if res.loop_closure is not None:
                    accepted.append(abs(res.loop_closure.candidate.map_id - place) <= tolerance)
                if length:
                    assert all(not math.isnan(c.sequence_similarity) for c in res.candidates)
                    assert res.timings["sequence_ms"] > 0
        finally:
            det.release()
        outcome[length, k] = (right_top, sum(accepted) / max(len(accepted), 1), len(accepted), proposals)
    return outcome


def test_nordland_sequence_scoring_and_consistency_beat_single_frames(nordland_runs):
    """With sequence scoring (L = 10) more winter frames propose their true place than frame by frame,
    and consistency (k = 3) on top accepts closures at least as precise as single frames at threshold 0."""
    outcome = nordland_runs
    print(f"nordland 40 places (right proposals, precision, closures): { {k: v[:3] for k, v in outcome.items()} }")
    assert outcome[10, 1][0] > outcome[0, 1][0]
    assert outcome[10, 3][1] >= outcome[0, 1][1] and outcome[10, 3][2] > 0


def test_sequence_model_fitted_on_a_real_run_orders_its_proposals(nordland_runs):
    """``fusion_fit.fit_sequence`` on the L = 10 run: the fused score of the fitted sequence model orders
    the run's proposals (what the rule accepts along it) at least as well as the global similarity,
    the spatial and RANSAC scores and the sequence similarity alone; the single-frame model is kept."""
    from vlad_localization import evaluation as ev
    from vlad_localization import fusion_fit
    from vlad_localization.choices import FUSED_FEATURES, sequence_keys
    from vlad_localization.config import load_config
    from vlad_localization.matching.fusion import sequence_model

    frames = nordland_runs[10, 1][3]
    single = {k: load_config("speed").matching.fusion_model[k] for k in ("bias", *FUSED_FEATURES)}
    model = fusion_fit.fit_sequence(single, [frames], GAP_S)
    assert set(model) == set(single) | set(sequence_keys("sequence"))
    assert {k: model[k] for k in single} == single
    assert min(model[k] for k in sequence_keys("sequence")[1:]) >= 0
    ranked = [ev.FrameProposals(f.stamp_ns, f.camera, _rescored(f.candidates, sequence_model(model, False)), f.positives)
              for f in frames]
    settings = {"min_time_gap_s": GAP_S, "consistency": 1}
    fused = ev.closure_curve(ranked, settings)
    for score in ("global_similarity", "spatial", "ransac", "sequence_similarity"):
        alone = ev.closure_curve(ranked, settings, score)
        assert fused["auc"] >= alone["auc"] - 1e-9, (score, fused["auc"], alone["auc"])
        assert fused["recall_at_100_precision"] >= alone["recall_at_100_precision"] - 1e-9, score


def _rescored(candidates, model):
    """The candidates with the re-ranked head's fused scores (and order) under the sequence ``model``."""
    import dataclasses

    from vlad_localization.matching.fusion import descending_order, fused_scores

    head = [c for c in candidates if c.evidence]
    p = fused_scores([c.global_similarity for c in head], [c.evidence["spatial"] for c in head],
                     [c.evidence["ransac"] for c in head], model, [c.sequence_similarity for c in head])
    head = [dataclasses.replace(c, fused_score=float(v)) for c, v in zip(head, p)]
    return [head[i] for i in descending_order(p)] + candidates[len(head):]


def test_sequence_candidates_respect_the_time_gap_and_travel(tmp_path, datasets_dir, speed_checkpoint, small_config):
    """With sequence scoring (and the contrast that proposes keyframes the search did not return) no
    candidate is ever younger than the time gap or closer along the path than min_travel_m."""
    from vlad_localization.cli.main import main as cli

    images = datasets_dir / "campus_loop_72"
    config = tmp_path / "contrast.yaml"
    config.write_text(small_config.read_text() + "loop_closure: {sequence_contrast_window: 3}\n")
    out = tmp_path / "run.jsonl"
    assert cli(["replay", "--images", str(images), "--poses", str(images / "data.csv"), "--mode", "loop_closure",
                "--checkpoint", str(speed_checkpoint), "--config", str(config), "--score-threshold", "0",
                "--min-gap", str(GAP_S), "--min-travel", str(TRAVEL_M), "--sequence-length", "5",
                "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    xy = np.loadtxt(images / "data.csv", delimiter=",", usecols=(1, 2))
    travel = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    assert sum(len(r["candidates"]) for r in records) > 0
    for r in records:
        i = round(r["query_stamp"])
        for c in r["candidates"]:
            j = round(c["map_stamp"])
            assert i - j >= GAP_S and travel[i] - travel[j] >= TRAVEL_M - 1e-6, (i, j)
            assert c["sequence_similarity"] is not None
