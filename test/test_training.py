"""``vlad-localization train``: place pairs and mining (unit), and a short CPU training on real
Nordland images (summer and winter as two runs, 100 m between the places kept)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vlad_localization.images import Frame, Pose, list_images, load_rgb
from vlad_localization.images.frames import NS_PER_S
from vlad_localization.training import PlaceCriteria, Run, TrainingDataError, TrainingFrames, TrainOptions, train
from vlad_localization.training.mining import mine_triplets, place_pairs, require_positives

HW = (64, 128)
CONFIG = f"base: speed\nmodel: {{image_height: {HW[0]}, image_width: {HW[1]}, patch_sizes: [3], strides: [1], " \
         "num_clusters: 8, num_pcs: 32, device: cpu, batch_size: 8}\n"


def _frames(positions, run, stamps_s, yaws=None) -> TrainingFrames:
    frames = [Frame(int(t * NS_PER_S), pose=Pose.from_xy_yaw(x, y, 0.0 if yaws is None else yaws[i]))
              for i, ((x, y), t) in enumerate(zip(positions, stamps_s))]
    runs = {}
    for f, r in zip(frames, run):
        runs.setdefault(r, []).append(f)
    return TrainingFrames.from_runs([Run(str(r), fs) for r, fs in sorted(runs.items())])


# ------------------------------------------------------------------------------------------ unit
def test_positives_respect_distances_time_gap_and_heading():
    """Run 0 drives x = 0..90 m at 1 m/s and comes back past x = 0 at t = 200 s; run 1 drives it once."""
    pos = [(x, 0.0) for x in range(0, 100, 10)] + [(2.0, 1.0)] + [(x + 3.0, 0.0) for x in range(0, 100, 10)]
    run = [0] * 11 + [1] * 10
    stamps = [x / 1.0 for x in range(0, 100, 10)] + [200.0] + [float(x) for x in range(0, 100, 10)]
    data = _frames(pos, run, stamps)
    criteria = PlaceCriteria(positive_m=10.0, negative_m=25.0, min_gap_s=30.0)
    pairs = place_pairs(data, criteria)
    for i in range(len(data)):
        d = np.linalg.norm(data.position - data.position[i], axis=1)
        for j in pairs.positives[i]:
            assert j != i and d[j] <= 10.0
            assert data.run[j] != data.run[i] or abs(data.stamp_ns[j] - data.stamp_ns[i]) >= 30 * NS_PER_S
        negs = pairs.negatives(i, len(data))
        assert np.all(d[negs] > 25.0) and i not in negs
        # every frame beyond 25 m is a negative, every one within 10 m of another run a positive
        assert set(negs) == set(np.flatnonzero(d > 25.0))
        assert {j for j in np.flatnonzero((d <= 10.0) & (data.run != data.run[i]))} <= set(pairs.positives[i])
    # frame 0 (x=0, t=0) and its neighbour 10 m on (t=10 s, same run) are not positives; the revisit is
    assert 1 not in pairs.positives[0] and 10 in pairs.positives[0]
    # a heading limit drops the revisit driven the other way
    data_back = _frames(pos, run, stamps, yaws=[0.0] * 10 + [math.pi] + [0.0] * 10)
    turned = place_pairs(data_back, PlaceCriteria(10.0, 25.0, positive_deg=30.0))
    assert 10 not in turned.positives[0] and 11 in turned.positives[0]


def test_hard_negatives_are_far_and_violate_the_margin():
    """Mined triplets: the best positive by descriptor, negatives beyond negative_m that violate the
    margin, hardest first; no positives at all is a clear error."""
    rng = np.random.default_rng(0)
    pos = [(x, 0.0) for x in range(0, 400, 20)] * 2
    data = _frames(pos, [0] * 20 + [1] * 20, list(range(20)) * 2)
    pairs = place_pairs(data, PlaceCriteria())
    desc = rng.normal(size=(40, 16)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    queries = require_positives(pairs, PlaceCriteria(), "training")
    assert len(queries) == 40
    triplets = mine_triplets(desc, pairs, queries, rng, num_negatives=5, sample=0, margin=2.0)
    for t in triplets:
        assert t.positive in pairs.positives[t.query]
        assert np.all(np.abs(data.position[t.negatives, 0] - data.position[t.query, 0]) > 25.0)
        d = np.linalg.norm(desc[t.negatives] - desc[t.query], axis=1)
        assert np.all(np.diff(d) >= 0) and len(t.negatives) == 5
        others = np.setdiff1d(pairs.negatives(t.query, 40), t.negatives)
        assert d.max() <= np.linalg.norm(desc[others] - desc[t.query], axis=1).min()
    lone = _frames([(0.0, 0.0), (100.0, 0.0)], [0, 0], [0.0, 1.0])
    with pytest.raises(TrainingDataError, match="no positives found.*--positive-m"):
        require_positives(place_pairs(lone, PlaceCriteria()), PlaceCriteria(), "training")


# ------------------------------------------------------------------------------------------ real data
def nordland_runs(datasets_dir: Path, places=range(0, 1200, 30)) -> list[Run]:
    names = [p.name for p in list_images(datasets_dir / "nordland_64x32" / "summer")]
    return [Run(season, [Frame(i * NS_PER_S, season, str(datasets_dir / "nordland_64x32" / season / names[i]),
                               Pose((i * 10.0, 0.0, 0.0)),
                               loader=(lambda p=datasets_dir / "nordland_64x32" / season / names[i]: load_rgb(p)))
                         for i in places])
            for season in ("summer", "winter")]


@pytest.fixture(scope="module")
def small(tmp_path_factory, vgg16_weights, datasets_dir):
    """An init-model checkpoint (8 clusters, 32 PCs, 64x128) of the runs' summer images, the config."""
    from vlad_localization.config import load_config
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint

    work = tmp_path_factory.mktemp("train")
    runs = nordland_runs(datasets_dir)
    base = build_offtheshelf_checkpoint(vgg16_weights, [Path(f.source) for f in runs[0].frames], work / "base.pth.tar",
                                        num_clusters=8, num_pcs=32, patch_sizes=(3,), strides=(1,), image_size=HW,
                                        device="cpu", seed=0, max_pca_samples=500, kmeans_iterations=10, progress=False)
    (work / "config.yaml").write_text(CONFIG)
    return {"work": work, "base": base, "config": work / "config.yaml",
            "model_cfg": load_config(str(work / "config.yaml")).model}


OPTIONS = TrainOptions(epochs=2, batch_size=8, val_fraction=0.25, max_pca_samples=500)


@pytest.fixture(scope="module")
def trained(small, datasets_dir):
    out = small["work"] / "full" / "trained.pth.tar"
    report = train(small["base"], nordland_runs(datasets_dir), out, small["model_cfg"], PlaceCriteria(), OPTIONS,
                   device="cpu", progress=False, echo=lambda _: None)
    return out, report


def test_short_training_lowers_validation_loss_and_keeps_recall(trained):
    out, report = trained
    before, epochs, after = report["before"], report["epochs"], report["after"]
    assert report["n_val_queries"] >= 10 and report["n_train_queries"] >= 60
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["loss"] < before["loss"]  # the validation loss
    assert after["recall"]["1"] >= before["recall"]["1"] and after["recall"]["5"] >= before["recall"]["5"]
    assert json.loads((out.parent / "trained.pth.tar.train" / "report.json").read_text())["best_epoch"] == \
        report["best_epoch"]


def test_resume_continues_exactly(trained, small, datasets_dir):
    """One epoch, then --resume to two: the same checkpoint and report as two epochs at once (to float
    round-off: the BLAS's summation order may depend on memory alignment), without recomputing the
    conv features; a resume with other options is refused before any work."""
    from vlad_localization.model.checkpoint import read_checkpoint

    out = small["work"] / "resumed" / "trained.pth.tar"
    runs = nordland_runs(datasets_dir)
    quiet = {"device": "cpu", "progress": False, "echo": lambda _: None}
    train(small["base"], runs, out, small["model_cfg"], PlaceCriteria(), TrainOptions(**{**OPTIONS.__dict__, "epochs": 1}),
          **quiet)
    features = out.parent / "trained.pth.tar.train" / "features.pt"
    written = features.stat().st_mtime_ns
    report = train(small["base"], runs, out, small["model_cfg"], PlaceCriteria(), OPTIONS, resume=True, **quiet)
    assert features.stat().st_mtime_ns == written
    full, resumed = read_checkpoint(trained[0]), read_checkpoint(out)
    for key, value in full.pool_state.items():
        torch.testing.assert_close(resumed.pool_state[key], value, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(resumed.wpca_weight, full.wpca_weight, rtol=1e-3, atol=1e-4)
    for got, want in zip(report["epochs"], trained[1]["epochs"], strict=True):
        assert got["triplets"] == want["triplets"] and got["recall"] == want["recall"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert report["best_epoch"] == trained[1]["best_epoch"]
    with pytest.raises(TrainingDataError, match="other seed"):
        train(small["base"], runs, out, small["model_cfg"], PlaceCriteria(),
              TrainOptions(**{**OPTIONS.__dict__, "seed": 1}), resume=True, **quiet)


def test_trained_checkpoint_loads_everywhere(trained, small, datasets_dir, tmp_path, capsys):
    """weights_only round trip, encode / build-map / query CLIs and the node's detector factory."""
    from vlad_localization.cli.main import main
    from vlad_localization.config import load_config
    from vlad_localization.model.checkpoint import read_checkpoint
    from vlad_localization.ros.node import load_detector

    out = trained[0]
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "vlad_localization"} and raw["vlad_localization"]["kind"] == "trained"
    contents = read_checkpoint(out)
    assert contents.num_clusters == 8 and contents.num_pcs == 32 and contents.backbone == "vgg16"
    summer = datasets_dir / "nordland_64x32" / "summer"
    images = [str(summer / n) for n in ("images-00010.png", "images-00500.png")]
    assert main(["encode", "--checkpoint", str(out), "--config", str(small["config"]), "--out",
                 str(tmp_path / "d.npz")] + images) == 0
    assert np.load(tmp_path / "d.npz")["global"].shape == (2, 32)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images:
        (folder / Path(p).name).symlink_to(p)
    assert main(["build-map", "--checkpoint", str(out), "--config", str(small["config"]), "--images", str(folder),
                 "--out", str(tmp_path / "map"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["query", "--map", str(tmp_path / "map"), "--checkpoint", str(out), "--config", str(small["config"]),
                 "--json", images[1]]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["candidates"][0]["map_id"] == 1
    cfg = load_config(str(small["config"]))
    cfg.loop_closure.mode = "loop_closure"
    detector = load_detector(cfg, str(out), "")
    assert detector is not None


def test_bad_input_is_a_one_line_error(small, datasets_dir, tmp_path, capsys):
    from vlad_localization.cli.main import main

    summer = datasets_dir / "nordland_64x32" / "summer"
    folder = tmp_path / "run"
    folder.mkdir()
    for p in list_images(summer)[:3]:
        (folder / p.name).symlink_to(p)
    csv = tmp_path / "poses.csv"
    csv.write_text("file,x,y\n" + "".join(f"{p.name},{10 * i},0\n" for i, p in enumerate(list_images(folder)[:2])))
    common = ["train", "--checkpoint", str(small["base"]), "--config", str(small["config"]), "--out",
              str(tmp_path / "o.pth.tar"), "--no-progress"]
    cases = [
        (["--images", str(folder), "--poses", str(csv)], "1 of 3 frames have no pose"),
        (["--images", str(folder)], "1 --images but 0 --poses"),
        (["--images", str(folder), "--poses", str(csv), "--train-layers", "layer3"],
         "does not fit the checkpoint's vgg16 backbone: use --train-layers conv5 or none"),
    ]
    for extra, message in cases:
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_calibrate_writes_a_config_whose_threshold_gives_the_printed_precision(trained, small, datasets_dir, tmp_path,
                                                                               capsys):
    """calibrate on 25 Nordland places (summer map, winter queries): the config loads, and `evaluate`
    with it on the same queries gives the precision and recall calibrate printed."""
    from vlad_localization.cli.main import main
    from vlad_localization.config import load_config

    out = trained[0]
    names = [p.name for p in list_images(datasets_dir / "nordland_64x32" / "summer")][0:1200:48]
    for season in ("summer", "winter"):
        (tmp_path / season).mkdir()
        for n in names:
            (tmp_path / season / n).symlink_to(datasets_dir / "nordland_64x32" / season / n)
    common = ["--checkpoint", str(out), "--config", str(small["config"]), "--no-progress"]
    assert main(["build-map", *common, "--images", str(tmp_path / "summer"), "--out", str(tmp_path / "map")]) == 0
    capsys.readouterr()
    queries = ["--map", str(tmp_path / "map"), "--queries", str(tmp_path / "winter"), "--same-name", *common]
    assert main(["calibrate", *queries, "--precision", "0.75", "--out", str(tmp_path / "cal.yaml"),
                 "--json", str(tmp_path / "cal.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "cal.json").read_text())
    assert f"precision {result['precision']:.4f}, recall {result['recall']:.4f}" in printed
    assert result["precision"] >= 0.75 and result["recall"] > 0
    cfg = load_config(str(tmp_path / "cal.yaml"))
    assert cfg.loop_closure.score_threshold == result["score_threshold"]
    assert cfg.matching.fusion_model == result["fusion_model"]
    assert cfg.model.image_height == HW[0]  # the --config YAML it started from is kept
    queries[queries.index("--config") + 1] = str(tmp_path / "cal.yaml")
    assert main(["evaluate", *queries, "--json", str(tmp_path / "eval.json")]) == 0
    curve = json.loads((tmp_path / "eval.json").read_text())["loop_closure"]["curve"]
    row = next(r for r in curve if r[0] == cfg.loop_closure.score_threshold)
    assert row[1:] == [result["precision"], result["recall"]]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (fp16 autocast path)"))])
def test_train_layers_conv5_trains_the_last_block_only(small, datasets_dir, device):
    """--train-layers conv5: conv5_1..conv5_3 change, the cached trunk (conv1..conv4) does not; the
    result loads as an ordinary checkpoint."""
    from vlad_localization.model.checkpoint import read_checkpoint

    out = small["work"] / f"conv5_{device}" / "trained.pth.tar"
    train(small["base"], nordland_runs(datasets_dir, range(0, 1200, 60)), out, small["model_cfg"], PlaceCriteria(),
          TrainOptions(epochs=1, batch_size=8, val_fraction=0.25, max_pca_samples=200, train_layers="conv5"),
          device=device, progress=False, echo=lambda _: None)
    base, trained = read_checkpoint(small["base"]).backbone_state, read_checkpoint(out).backbone_state
    torch.testing.assert_close(trained["21.weight"], base["21.weight"], rtol=0, atol=0)  # conv4_3
    assert not torch.equal(trained["28.weight"], base["28.weight"])  # conv5_3


# ------------------------------------------------------------------------------------------ calibrate from runs
def _posed_runs(tmp_path: Path, datasets_dir: Path, places, stamps: bool) -> dict[str, tuple[Path, Path]]:
    """Summer and winter folders of Nordland ``places`` with poses CSVs (place i at x = 10 i m; with
    ``stamps`` frame i is stamped i s, else the CSV has none and frames are 1 s apart)."""
    names = [p.name for p in list_images(datasets_dir / "nordland_64x32" / "summer")]
    out = {}
    for season in ("summer", "winter"):
        folder = tmp_path / season
        folder.mkdir()
        rows = ["file,stamp,x,y" if stamps else "file,x,y"]
        for i in places:
            (folder / names[i]).symlink_to(datasets_dir / "nordland_64x32" / season / names[i])
            rows.append(f"{names[i]},{i},{10 * i},0" if stamps else f"{names[i]},{10 * i},0")
        (tmp_path / f"{season}.csv").write_text("\n".join(rows) + "\n")
        out[season] = (folder, tmp_path / f"{season}.csv")
    return out


def _precision_recall_at(checkpoint, config_yaml: Path, data: TrainingFrames, criteria: PlaceCriteria):
    """(precision, recall) of the config's threshold and fused model on ``data``'s frames (a fresh pass)."""
    from vlad_localization import evaluation as ev
    from vlad_localization.calibration import acceptance_curve, at_threshold, run_records
    from vlad_localization.config import load_config

    cfg = ev.evaluation_config(load_config(str(config_yaml)))
    records, keyframes = run_records(checkpoint, data, cfg, criteria, "cpu", progress=False)
    curve = acceptance_curve(records, cfg.matching.fusion_model, cfg.loop_closure, keyframes)
    return at_threshold(curve, cfg.loop_closure.score_threshold), records


def test_calibrate_from_a_map_and_a_run_with_poses(small, datasets_dir, tmp_path, capsys):
    """calibrate --map (built with poses) --images --poses: ground truth from positions (--positive-m),
    each frame's own run within --min-gap-s left out; the written config reproduces what it printed."""
    from vlad_localization.cli.main import main
    from vlad_localization.training import folder_run, map_run

    runs = _posed_runs(tmp_path, datasets_dir, range(0, 1200, 48), stamps=False)  # 25 places, 480 m apart
    common = ["--checkpoint", str(small["base"]), "--config", str(small["config"]), "--no-progress"]
    assert main(["build-map", *common, "--images", str(runs["summer"][0]), "--poses", str(runs["summer"][1]),
                 "--out", str(tmp_path / "map")]) == 0
    capsys.readouterr()
    assert main(["calibrate", *common, "--map", str(tmp_path / "map"), "--images", str(runs["winter"][0]),
                 "--poses", str(runs["winter"][1]), "--positive-m", "10", "--precision", "0.75",
                 "--out", str(tmp_path / "cal.yaml"), "--json", str(tmp_path / "cal.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "cal.json").read_text())
    assert f"precision {result['precision']:.4f}, recall {result['recall']:.4f} on 50 queries (50 with" in printed
    assert result["precision"] >= 0.75 and result["recall"] > 0
    data = TrainingFrames.from_runs([map_run(tmp_path / "map"), folder_run(*runs["winter"])])
    (precision, recall), records = _precision_recall_at(small["base"], tmp_path / "cal.yaml", data,
                                                        PlaceCriteria(positive_m=10.0))
    assert (precision, recall) == (result["precision"], result["recall"])
    for i, record in enumerate(records):  # the map is frames 0..24, the winter run 25..49, 1 s apart
        other = 25 * (i < 25)
        assert record.positives == {other + i % 25}  # the same place in the other run, 480 m from the rest
        assert len(record.map_ids) == 20 and all(other <= m < other + 25 for m in record.map_ids)


def test_calibrate_on_one_run_that_revisits(small, datasets_dir):
    """One run: 12 summer places at 0..11 s, then the same places in winter at 100..111 s; a frame's
    positive is its revisit (not itself, not its neighbours of the same pass: < min_gap_s)."""
    from vlad_localization.calibration import run_records
    from vlad_localization.config import load_config
    from vlad_localization import evaluation as ev

    seasons = nordland_runs(datasets_dir, range(0, 1200, 100))
    frames = [Frame((t + 100 * k) * NS_PER_S, f.frame_id, f.source, f.pose, loader=f.loader)
              for k, run in enumerate(seasons) for t, f in enumerate(run.frames)]
    data = TrainingFrames.from_runs([Run("loop", frames)])
    cfg = ev.evaluation_config(load_config(str(small["config"])))
    records, _ = run_records(small["base"], data, cfg, PlaceCriteria(positive_m=10.0, min_gap_s=30.0), "cpu",
                             progress=False)
    assert len(records) == 24
    for i, record in enumerate(records):
        other = 12 * (i < 12)
        assert record.positives == {other + i % 12}
        assert sorted(record.map_ids) == list(range(other, other + 12))  # the same pass is left out


def test_train_calibrates_on_its_validation_places(small, datasets_dir, tmp_path, capsys):
    """train (CLI, runs as folders with poses) writes OUT.yaml beside the checkpoint and prints the recall
    it keeps; the config reproduces that precision and recall on the validation frames; --no-calibrate
    writes none."""
    from vlad_localization.cli.main import main
    from vlad_localization.training import folder_run, split_by_place

    runs = _posed_runs(tmp_path, datasets_dir, range(0, 1200, 30), stamps=True)
    out = tmp_path / "trained.pth.tar"
    cmd = ["train", "--checkpoint", str(small["base"]), "--config", str(small["config"]), "--out", str(out),
           "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.5", "--precision", "0.5", "--no-progress",
           "--images", str(runs["summer"][0]), "--poses", str(runs["summer"][1]),
           "--images", str(runs["winter"][0]), "--poses", str(runs["winter"][1])]
    assert main(cmd) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "trained.pth.tar.train" / "report.json").read_text())
    cal = report["calibration"]
    assert cal["config"] == str(tmp_path / "trained.yaml") and cal["n_queries"] == report["n_val_frames"] == 40
    assert (f"calibrated on the validation places: loop_closure.score_threshold {cal['score_threshold']}: precision "
            f"{cal['precision']:.4f}, recall {cal['recall']:.4f}") in printed
    assert cal["precision"] >= 0.5 and cal["recall"] > 0
    data = TrainingFrames.from_runs([folder_run(*runs["summer"]), folder_run(*runs["winter"])])
    _, val = split_by_place(data, 0.5, 50.0, 0)
    (precision, recall), _ = _precision_recall_at(out, tmp_path / "trained.yaml", data.subset(val), PlaceCriteria())
    assert (precision, recall) == (cal["precision"], cal["recall"])
    (tmp_path / "trained.yaml").unlink()
    assert main(cmd + ["--resume", "--no-calibrate"]) == 0  # nothing left to train: refit and write only
    assert not (tmp_path / "trained.yaml").exists() and "calibrated on" not in capsys.readouterr().out


def _global_recall_at_1(checkpoint: Path, model_cfg, datasets_dir: Path, places) -> float:
    """Recall@1 of winter queries against a summer map, global descriptors, on Nordland ``places``."""
    from vlad_localization.model.encoder import Encoder

    encoder = Encoder.from_checkpoint(checkpoint, model_cfg, "cpu")
    names = [p.name for p in list_images(datasets_dir / "nordland_64x32" / "summer")]
    desc = {s: encoder.encode([load_rgb(datasets_dir / "nordland_64x32" / s / names[i]) for i in places])
            .global_desc.numpy() for s in ("summer", "winter")}
    encoder.release()
    return float(np.mean((desc["winter"] @ desc["summer"].T).argmax(1) == np.arange(len(places))))


def test_learned_whitening_finds_unseen_places_across_seasons(small, datasets_dir, tmp_path):
    """--epochs 0: only the whitening, learned from 380 summer/winter pairs (and settings chosen on
    the validation places), against init-model's PCA-whitening refitted on the same frames, on 130
    places of the route never seen (summer map, winter queries)."""
    runs = nordland_runs(datasets_dir, range(0, 2100, 5))
    out = tmp_path / "trained.pth.tar"
    options = TrainOptions(epochs=0, val_fraction=0.1, max_pca_samples=2000)
    recall = {}
    for whitening in ("pca", "learned"):
        report = train(small["base"], runs, out, small["model_cfg"], PlaceCriteria(),
                       TrainOptions(**{**options.__dict__, "whitening": whitening}), device="cpu", progress=False,
                       echo=lambda _: None)
        assert report["whitening"]["method"] == whitening and report["epochs"] == []
        recall[whitening] = _global_recall_at_1(out, small["model_cfg"], datasets_dir, range(2200, 3500, 10))
    recall["base"] = _global_recall_at_1(small["base"], small["model_cfg"], datasets_dir, range(2200, 3500, 10))
    assert recall["learned"] >= 1.5 * max(recall["pca"], recall["base"])  # measured 0.24 against 0.13 and 0.10
