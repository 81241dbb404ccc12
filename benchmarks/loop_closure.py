"""Loop closures a backend can trust: single-frame acceptance against temporal consistency and
sequence scoring, on real runs. Prints one JSON object.

Runs (the detector in ``loop_closure`` mode, as ``replay`` runs it, score threshold 0 so every
proposal is recorded; the acceptance rule is then swept over every threshold, which is exactly what
the detector would accept at that threshold, see ``evaluation.closure_curve``):

- ``nordland``: a stretch of ``--places`` Nordland places (``--first``), summer then winter, as ONE
  run (summer place i at i s, winter place i at ``--lap-gap`` + i s; min_time_gap 30 s). A winter
  frame's closure is right when it matches a summer keyframe within +-2 places; every other closure
  (a summer frame, a winter frame matching winter) is wrong. The off-the-shelf model of
  ``fit_fusion.py`` (ImageNet VGG16, 16 clusters, 128 PCs, fitted on the stretch's summer images).
- ``campus``: campus_loop_72 (every image a keyframe, stamps i s, poses from data.csv, min_travel 20 m):
  the one real revisit 71 -> 0 (or 1, within 10 m); and what the rule accepts on it at the
  threshold ``vlad-localization calibrate`` chooses on the run itself (``campus_calibrated``).

Per variant (single frame; consistency k = 2, 3, 5; sequence L = 5, 10, 20; sequence with consistency)
and per acceptance score (the rule's fused score and each input alone): recall at 100 % precision,
PR AUC and the share of frames whose accepted closure is right at threshold 0. ``cost``: the
per-frame time of the rule and of sequence scoring with 10k keyframes in the run's store, against
the encoder's time per image on this machine.

    python benchmarks/loop_closure.py [--cache /tmp/vlad_loop_closure] [--places 300] [--out lc.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from vlad_localization import evaluation as ev
from vlad_localization.config import apply_overrides, load_config
from vlad_localization.images import load_rgb
from vlad_localization.images.frames import NS_PER_S, Pose
from vlad_localization.mapdb import Store

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
DATA = SHARED / "datasets"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_conv5_3.pth"
GAP_S = 30.0
TOLERANCE = 2  # Nordland places
CONSISTENCY = (1, 2, 3, 5)
SEQUENCES = (0, 5, 10, 20)
CONTRASTS = (0, 10)  # sequence_contrast_window
CAMPUS_RUNS = ((0, 0), (10, 0), (10, 10))  # (sequence_length, sequence_contrast_window)
CANDIDATE_KEYS = ("map_id", "stamp_ns", "frame_id", "store", "global_similarity", "sequence_similarity",
                  "patch_score", "fused_score")


def _model(out: Path, images, hw) -> Path:
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint

    checkpoint = out / "model.pth.tar"
    if not checkpoint.is_file():
        out.mkdir(parents=True, exist_ok=True)
        build_offtheshelf_checkpoint(WEIGHTS, images, checkpoint, num_clusters=16, num_pcs=128, patch_sizes=(5,),
                                     strides=(1,), image_size=hw, device="cpu", seed=0, max_pca_samples=5000,
                                     kmeans_iterations=25, progress=False)
    return checkpoint


def _config(hw, sequence_length: int, min_travel: float = 0.0, contrast: int = 0):
    return apply_overrides(load_config("speed"), {"loop_closure.sequence_contrast_window": contrast,
        "model.num_clusters": 16, "model.num_pcs": 128, "model.image_height": hw[0], "model.image_width": hw[1],
        "model.device": "cpu", "localizer.rerank_k": 10, "localizer.top_k": 20, "loop_closure.mode": "loop_closure",
        "loop_closure.score_threshold": 0.0, "loop_closure.min_time_gap_s": GAP_S, "loop_closure.consistency": 1,
        "loop_closure.min_travel_m": min_travel, "loop_closure.sequence_length": sequence_length})


def _lite(c) -> dict:
    row = {k: getattr(c, k) for k in CANDIDATE_KEYS}
    row["evidence"] = dict(c.evidence)
    row["position"] = None if c.pose is None else list(c.pose.position)
    return row


def _frames_from(rows, model, contrast: bool = False) -> list[ev.FrameProposals]:
    """Frames from the cached rows, the re-ranked head's fused scores (and order) recomputed with the
    fused ``model`` (so a refit needs no new pass); ``contrast``: the rows' sequence similarity is
    contrast-enhanced."""
    from vlad_localization.matching.fusion import descending_order, fused_scores, sequence_model
    from vlad_localization.pipeline import Candidate


    out = []
    for r in rows:
        cands = []
        for c in r["candidates"]:
            pose = None if c["position"] is None else Pose(tuple(c["position"]))
            cand = Candidate(c["map_id"], c["stamp_ns"], c["frame_id"], "", pose, c["global_similarity"],
                             patch_score=c["patch_score"], fused_score=c["fused_score"], store=Store(c["store"]),
                             sequence_similarity=c["sequence_similarity"], evidence=c["evidence"])
            cands.append(cand)
        head = [c for c in cands if c.evidence]
        if head:
            sequence = np.array([c.sequence_similarity for c in head])
            on = np.isfinite(sequence).all()
            p = fused_scores([c.global_similarity for c in head], [c.evidence["spatial"] for c in head],
                             [c.evidence["ransac"] for c in head], sequence_model(model, contrast) if on else model,
                             sequence if on else None)
            for c, value in zip(head, p):
                c.fused_score = float(value)
            cands = [head[i] for i in descending_order(p)] + cands[len(head):]
        out.append(ev.FrameProposals(r["stamp_ns"], 0, cands, {tuple(p) for p in r["positives"]}))
    return out


def encoded(checkpoint, cfg, paths, cache: Path) -> list:
    """The Descriptors of each image (one encode per image for every variant), cached as .npz."""
    import torch

    from vlad_localization.model.descriptors import Descriptors
    from vlad_localization.model.encoder import Encoder

    if not cache.is_file():
        encoder = Encoder.from_checkpoint(checkpoint, cfg.model, "cpu")
        arrays = {}
        for i, path in enumerate(paths):
            d = encoder.encode([load_rgb(path)])
            g, patches = d.numpy()
            arrays[f"g{i}"] = g
            arrays.update({f"p{i}_{p}": a for p, a in patches.items()})
            arrays["layout"] = np.array([*d.grid, *d.image_size])
        encoder.release()
        np.savez(cache, **arrays)
    data = np.load(cache)
    grid, size = tuple(int(v) for v in data["layout"][:2]), tuple(int(v) for v in data["layout"][2:])
    sizes = sorted({int(k.split("_")[1]) for k in data.files if k.startswith("p0_")})
    return [Descriptors(torch.from_numpy(data[f"g{i}"]), {p: torch.from_numpy(data[f"p{i}_{p}"]) for p in sizes},
                        grid, size) for i in range(len(paths))]


def run_detector(checkpoint, cfg, frames, cache: Path, descriptors=None) -> list[ev.FrameProposals]:
    """Every frame through one detector: (stamp_ns, path, pose, positives), with their
    ``descriptors`` when already encoded; cached as JSON."""
    from vlad_localization.detector import LoopClosureDetector

    model, contrast = cfg.matching.fusion_model, cfg.loop_closure.sequence_contrast_window > 0
    if cache.is_file():
        return _frames_from(json.loads(cache.read_text()), model, contrast)
    det = LoopClosureDetector.from_config(cfg, checkpoint)
    rows = []
    try:
        for i, (stamp_ns, path, pose, positives) in enumerate(frames):
            res = det.process(stamp_ns, load_rgb(path), pose, descriptors=None if descriptors is None else descriptors[i])
            rows.append({"stamp_ns": stamp_ns, "candidates": [_lite(c) for c in res.candidates],
                         "positives": sorted(positives)})
    finally:
        det.release()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows))
    return _frames_from(rows, model, contrast)


def nordland_frames(first: int, places: int, lap_gap: float):
    names = [f"images-{(first + i) * 10:05d}.png" for i in range(places)]
    root = DATA / "nordland_64x32"
    summer = [(i * NS_PER_S, root / "summer" / n, None, set()) for i, n in enumerate(names)]
    winter = [(round((lap_gap + i) * NS_PER_S), root / "winter" / n, None,
               {(Store.RUN, j) for j in range(max(0, i - TOLERANCE), min(places, i + TOLERANCE + 1))})
              for i, n in enumerate(names)]
    return summer + winter, [root / "summer" / n for n in names]


def campus_frames():
    root = DATA / "campus_loop_72"
    xy = np.loadtxt(root / "data.csv", delimiter=",", usecols=(1, 2))
    frames = []
    for i in range(72):
        near = {(Store.RUN, j) for j in range(72) if i - j >= GAP_S and np.hypot(*(xy[i] - xy[j])) < 10.0}
        frames.append((i * NS_PER_S, root / f"image_{i}.png", Pose((float(xy[i, 0]), float(xy[i, 1]), 0.0)), near))
    return frames, [root / f"image_{i}.png" for i in range(0, 72, 6)]


def variants(frames_by_length: dict[int, list]) -> dict:
    """{variant: {acceptance score: closure_curve summary without the curve}} of ``{(L, contrast
    window): frames}``."""
    out = {}
    for (length, contrast), frames in frames_by_length.items():
        for k in CONSISTENCY:
            if length and k not in (1, 3):
                continue
            name = ("single" if k == 1 else f"consistency_{k}") if not length else \
                f"sequence_{length}" + (f"_contrast_{contrast}" if contrast else "") + \
                ("" if k == 1 else f"_consistency_{k}")
            scores = [s for s in ev.ACCEPTANCE_SCORES if length or s != "sequence_similarity"]
            settings = {"min_time_gap_s": GAP_S, "consistency": k}
            out[name] = {}
            for score in scores:
                summary = ev.closure_curve(frames, settings, score)
                out[name][score] = {key: (round(v, 4) if isinstance(v, float) else v) for key, v in summary.items()
                                    if key != "curve"}
            out[name]["score"]["at_shipped_threshold"] = at_threshold(ev.closure_curve(frames, settings)["curve"])
    return out


def at_threshold(curve, threshold: float | None = None) -> dict:
    """Precision and recall of what the rule accepts at ``threshold`` (default: the presets'
    ``score_threshold``) from a :func:`evaluation.closure_curve` curve."""
    threshold = load_config("speed").loop_closure.score_threshold if threshold is None else threshold
    rows = [row for row in curve if row[0] >= threshold]
    precision, recall = (rows[0][1], rows[0][2]) if rows else (1.0, 0.0)
    return {"threshold": threshold, "precision": round(precision, 4), "recall": round(recall, 4)}


def accepted_closures(frames, consistency: int, threshold: float = 0.0) -> list[tuple[int, int]]:
    """(query index, matched keyframe id) of every closure the rule accepts at ``threshold``."""
    from vlad_localization.loop_closure import LoopClosureRule

    rule = LoopClosureRule(threshold, GAP_S, consistency)
    out = []
    for i, f in enumerate(frames):
        closure, _ = rule.decide(f.stamp_ns, f.candidates, f.camera)
        if closure is not None:
            out.append((i, int(closure.candidate.map_id)))
    return out


def calibrated_on_itself(checkpoint, hw, frames, work: Path) -> dict:
    """``vlad-localization calibrate --images --poses --keep-model`` on the campus run itself (every
    frame a query against the rest of the run, same place within 10 m, precision 0.99): the
    threshold it writes and the closures the rule accepts at it on the run's single frames (the
    presets' fused model). In-sample: the run is all there is."""
    from vlad_localization.cli.main import main as cli

    root = DATA / "campus_loop_72"
    config = work / "config_240x320.yaml"
    config.write_text(f"base: speed\nmodel: {{image_height: {hw[0]}, image_width: {hw[1]}, device: cpu}}\n")
    rc = cli(["calibrate", "--images", str(root), "--poses", str(root / "data.csv"), "--checkpoint", str(checkpoint),
              "--config", str(config), "--keep-model", "--min-gap-s", str(GAP_S), "--positive-m", "10",
              "--precision", "0.99", "--out", str(work / "calibrated.yaml"), "--json", str(work / "calibrated.json"),
              "--no-progress"])
    if rc:
        raise SystemExit(f"calibrate on the campus run failed ({rc})")
    result = json.loads((work / "calibrated.json").read_text())
    threshold = float(result["score_threshold"])
    return {"score_threshold": round(threshold, 4), "precision": result["precision"], "recall": result["recall"],
            "n_queries_with_match": result["n_queries_with_match"],
            "closures_single_frame": accepted_closures(frames, 1, threshold)}


def best_scored(frames, n: int = 3) -> list[list]:
    """[query index, matched keyframe id, score] of the ``n`` highest-scored proposals of a run."""
    from vlad_localization.loop_closure import proposal_of

    rows = []
    for i, f in enumerate(frames):
        found = proposal_of(f.stamp_ns, f.candidates, GAP_S)
        if found is not None and np.isfinite(found[1].score):
            rows.append([i, int(found[1].map_id), round(float(found[1].score), 4)])
    return sorted(rows, key=lambda r: -r[2])[:n]


def cost(checkpoint, hw, keyframes: int = 10_000, frames: int = 20, consistency: int = 3, length: int = 20,
         contrast: int = 0) -> dict:
    """Per-frame ms of the acceptance rule (``decide_ms``, with consistency k) and of sequence scoring
    (``sequence_ms``, L frames) with ``keyframes`` already in the run's store (real descriptors of
    Nordland frames, replicated with noise, a keyframe a second), against the encoder's ms per image,
    all from the detector's own per-frame timings (medians)."""
    from vlad_localization.detector import LoopClosureDetector
    from vlad_localization.mapdb.metadata import Keyframe
    from vlad_localization.mapdb.patch_store import PATCH_DTYPE

    images = sorted((DATA / "nordland_64x32" / "winter").glob("*.png"))[1000:1000 + frames]
    cfg = apply_overrides(_config(hw, length, contrast=contrast), {"loop_closure.consistency": consistency,
                                                "loop_closure.max_keyframes": keyframes})
    det = LoopClosureDetector.from_config(cfg, checkpoint)
    try:
        rgb = [load_rgb(p) for p in images]
        desc = det.localizer.encode(rgb[0])
        g0, patches = desc.numpy()
        rng = np.random.default_rng(0)
        for i in range(keyframes):  # prefill the run's store (and its timeline) as the detector's inserts do
            g = g0[0] + rng.normal(0, 0.05, g0.shape[1]).astype(np.float32)
            g /= np.linalg.norm(g)
            kf = Keyframe(id=-1, stamp_ns=i * NS_PER_S, frame_id="camera0", source=Store.RUN.keyframe_source(0))
            new = det.run_map.add(g, {p: a[0].astype(PATCH_DTYPE) for p, a in patches.items()}, kf,
                                  grid=desc.grid, image_size=desc.image_size)
            det._run_timeline.add(new, i * NS_PER_S, (0, "camera0"))
        timings = [det.process((keyframes + 100 + j) * NS_PER_S, x).timings for j, x in enumerate(rgb)]
    finally:
        det.release()
    med = {key: round(float(np.median([t[key] for t in timings[2:]])), 3)
           for key in ("encode_ms", "sequence_ms", "decide_ms", "search_ms", "rerank_ms", "total_ms")}
    return {**med, "keyframes": keyframes, "image_size": list(hw), "consistency": consistency,
            "sequence_length": length, "sequence_contrast_window": contrast,
            "fraction_of_encode": round((med["sequence_ms"] + med["decide_ms"]) / med["encode_ms"], 4)}


def costs(checkpoint, hw) -> dict:
    """:func:`cost` at the Nordland input and at 640x480, without and with SeqSLAM contrast."""
    return {f"{name}_contrast_{w}": cost(checkpoint, size, contrast=w) for name, size in
            (("nordland_128x256", hw), ("speed_480x640", (480, 640))) for w in CONTRASTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vlad_loop_closure"))
    parser.add_argument("--first", type=int, default=1000, help="first Nordland place (file images-<first*10>.png)")
    parser.add_argument("--places", type=int, default=300)
    parser.add_argument("--lap-gap", type=float, default=1000.0, help="winter lap starts this many s after summer")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--cost-only", action="store_true", help="only the per-frame cost (needs the Nordland model)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.node()} {os.cpu_count()} cores",
              "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
              "command": "python benchmarks/loop_closure.py " + " ".join(os.sys.argv[1:])}
    nordland, summer = nordland_frames(args.first, args.places, args.lap_gap)
    hw = (128, 256)
    work = args.cache / f"nordland_{args.first}_{args.places}"
    checkpoint = _model(work, summer, hw)
    if args.cost_only:
        report["cost"] = costs(checkpoint, hw)
        print(json.dumps(report, indent=1))
        return
    descs = encoded(checkpoint, _config(hw, 0), [f[1] for f in nordland], work / "descriptors.npz")
    runs = {(L, w): run_detector(checkpoint, _config(hw, L, contrast=w), nordland, work / f"frames_L{L}_w{w}.json",
                                 descs) for L in SEQUENCES for w in CONTRASTS if L or not w}
    report["nordland"] = variants(runs)
    campus, fit_images = campus_frames()
    cwork = args.cache / "campus"
    cckpt = _model(cwork, fit_images, (240, 320))
    cdescs = encoded(cckpt, _config((240, 320), 0), [f[1] for f in campus], cwork / "descriptors.npz")
    cruns = {(L, w): run_detector(cckpt, _config((240, 320), L, 20.0, w), campus, cwork / f"frames_L{L}_w{w}.json",
                                  cdescs) for L, w in CAMPUS_RUNS}
    threshold = load_config("speed").loop_closure.score_threshold
    report["campus"] = {f"L{L}_w{w}_k{k}": {"threshold_0": accepted_closures(frames, k),
                                            "shipped_threshold": accepted_closures(frames, k, threshold),
                                            "best_scored": best_scored(frames)}
                        for (L, w), frames in cruns.items() for k in CONSISTENCY}
    report["campus_calibrated"] = calibrated_on_itself(cckpt, (240, 320), cruns[(0, 0)], cwork)
    if not args.no_cost:
        report["cost"] = costs(checkpoint, hw)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
