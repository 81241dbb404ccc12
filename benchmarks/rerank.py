"""Re-ranking time per query: our batched PatchMatcher vs the official per-candidate loop.

For each preset (speed: patch size 5, 512-D, rapid spatial scoring; performance: sizes 2, 5, 8,
4096-D, RANSAC) and each top-k, the query's and all candidates' patch descriptors are already in
memory (640x480 input: 30x40 conv grid). Candidates are synthetic unit descriptors
``normalize(a_k * query + noise)`` with a_k spread over [0, 1], so mutual-match counts range from
chance level to a near-duplicate, as in a real top-k. The reference is
``patchnetvlad.tools.patch_matcher.PatchMatcher`` called once per candidate as ``local_matcher``
does, then ``normalise_func`` + argsort; ours is ``PatchMatcher.score`` in reference fusion mode
(``fused_s``: ours with ``fusion: fused``, the presets' default, which runs both matchers).
Prints one JSON object: median seconds per query over ``--repeats`` runs and ours / reference, plus
the time of the fp32 similarity products alone (``products_s``), the floor of any exact method.

Verification (``verification`` in the JSON): the time to verify one candidate with a relative
pose (:func:`vlad_localization.verification.verify_candidate`) on a real EuRoC revisit
(``left_img_1`` -> ``left_img_0``, 752x480) with the patch matches of a small off-the-shelf speed
model (built from ``--weights`` and ``--datasets`` in ~10 s): monocular (SIFT on both images, guided
matching, essential matrix, covariance) and stereo (plus SGBM disparity of the candidate's pair,
PnP), and the parts: SIFT of one image, guided matching (features given), stereo depth, the
estimators alone. In a node the query's SIFT is computed once per frame and a keyframe's could be
stored, leaving guided matching + estimation per candidate.

``fused_opencv_s`` / ``fused_batched_s``: the fused re-ranking per frame with its RANSAC on OpenCV
(``matching.workers`` threads) and batched in torch on ``--device`` (``matching.ransac_backend``),
timed in the same run; ``batched_over_opencv`` is their ratio.

``matching.workers`` threads score the candidates (``--workers``, default one per core, at most 8);
with several, ``ours_one_thread_s`` / ``fused_one_thread_s`` time the same on one thread.

    python benchmarks/rerank.py [--device cuda] [--repeats 3] [--top-k 10 50] [--workers N] [--no-reference]
        [--no-verification]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlad_localization.config import MatchingConfig, load_config
from vlad_localization.matching.keypoints import patch_keypoints
from vlad_localization.matching.matcher import PatchMatcher, scoring_workers
from vlad_localization.model.geometry import VGG16_CONV5_3

GRID = (30, 40)  # VGG16 conv5_3 at 640x480
PRESETS = {
    "speed": {"patch_sizes": (5,), "weights": (1.0,), "dim": 512, "matcher": "spatial"},
    "performance": {"patch_sizes": (2, 5, 8), "weights": (0.45, 0.15, 0.4), "dim": 4096, "matcher": "ransac"},
}


def synthetic_descriptors(preset: dict, top_k: int, device: torch.device, seed: int = 0):
    """Query {P: (Pq, D)} and candidates {P: (K, Pc, D)}: unit rows, candidates related to the query."""
    gen = torch.Generator().manual_seed(seed)
    query, cands = {}, {}
    mix = torch.linspace(0.0, 1.0, top_k).view(-1, 1, 1)
    for size in preset["patch_sizes"]:
        num = patch_keypoints(VGG16_CONV5_3, GRID, size, 1)[0].shape[1]
        q = F.normalize(torch.randn(num, preset["dim"], generator=gen), dim=-1)
        noise = F.normalize(torch.randn(top_k, num, preset["dim"], generator=gen), dim=-1)
        query[size] = q.to(device)
        cands[size] = F.normalize(mix * q + noise, dim=-1).to(device)
    return query, cands


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, repeats: int, device: torch.device):
    """(median seconds over ``repeats`` timed runs after one warm-up, the last run's output)."""
    out = fn()  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def ours(preset: dict, query, cands, workers: int = 0):
    cfg = MatchingConfig(matcher=preset["matcher"], patch_weights=list(preset["weights"]), fusion="reference", ransac_seed=0,
                         workers=workers)
    matcher = PatchMatcher(cfg, preset["patch_sizes"], [1] * len(preset["patch_sizes"]), VGG16_CONV5_3, GRID)
    return lambda: matcher.score(query, cands).order


def ours_fused(preset: dict, query, cands, workers: int = 0, backend: str = "auto"):
    """Ours with ``fusion: fused`` (the presets' default): both matchers on the same mutual matches,
    the RANSAC on ``backend`` (matching.ransac_backend)."""
    model = load_config("speed").matching.fusion_model  # the three presets ship the same coefficients
    cfg = MatchingConfig(matcher=preset["matcher"], patch_weights=list(preset["weights"]), fusion="fused",
                         fusion_model=model, ransac_seed=0, workers=workers, ransac_backend=backend)
    matcher = PatchMatcher(cfg, preset["patch_sizes"], [1] * len(preset["patch_sizes"]), VGG16_CONV5_3, GRID)
    sims = np.zeros(next(iter(cands.values())).shape[0])
    return lambda: matcher.score(query, cands, sims).order


def products_only(query, cands):
    """Just the fp32 query x candidate patch similarity products, one candidate at a time: what any
    exact mutual-nearest-neighbour search must compute, so ours / reference cannot drop below
    ``products_s / reference_s`` without giving up exactness."""
    return lambda: [torch.matmul(q, cands[p][k].t()) for p, q in query.items() for k in range(cands[p].shape[0])]


def reference(preset: dict, query, cands):
    from patchnetvlad.models.local_matcher import calc_keypoint_centers_from_patches, normalise_func
    from patchnetvlad.tools.patch_matcher import PatchMatcher as ReferenceMatcher

    sizes = list(preset["patch_sizes"])
    frame = {"imageresizeH": GRID[0] * 16, "imageresizeW": GRID[1] * 16}
    centres = [calc_keypoint_centers_from_patches(frame, p, p, 1, 1) for p in sizes]
    matcher = ReferenceMatcher("RANSAC" if preset["matcher"] == "ransac" else "spatialApproximator", sizes,
                               [1] * len(sizes), [c[0] for c in centres], [c[1] for c in centres])
    qfeat = [query[p] for p in sizes]  # (Pq, D), as local_matcher pre-transposes the query
    dbfeats = [[cands[p][k].t().contiguous() for p in sizes] for k in range(cands[sizes[0]].shape[0])]  # (D, Pc) as stored
    weights = np.array(preset["weights"])

    def run():
        diffs = np.zeros((len(dbfeats), len(sizes)))
        for k, dbfeat in enumerate(dbfeats):
            diffs[k, :], _, _ = matcher.match(qfeat, dbfeat)
        return np.argsort(normalise_func(diffs, len(sizes), weights))

    return run


def verification(datasets: Path, weights: Path, repeats: int) -> dict:
    """Seconds per verified candidate on the EuRoC revisit (median of ``repeats``), see the module doc."""
    import tempfile

    from vlad_localization.config import load_config
    from vlad_localization.images.io import load_rgb
    from vlad_localization.model.encoder import Encoder
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint
    from vlad_localization.verification import StereoRig, View, load_euroc_sensor, stereo_depth_at, verify_candidate
    from vlad_localization.verification.refine import sift_features
    from vlad_localization.verification.verifier import estimate_pose, refined_matches

    euroc = datasets / "euroc_loop_pairs"
    if not euroc.is_dir() or not weights.is_file():
        return {"skipped": f"needs {euroc} and {weights}"}
    cfg = load_config("speed")
    cfg.model.patch_sizes, cfg.model.strides = [5], [1]
    cfg.model.image_height, cfg.model.image_width = 240, 320
    images = [euroc / f"left_img_{i}.png" for i in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_offtheshelf_checkpoint(weights, images, Path(tmp) / "m.pth.tar", num_clusters=16,
                                                  num_pcs=32, image_size=(240, 320), device="cpu", progress=False)
        encoder = Encoder.from_checkpoint(checkpoint, cfg.model, device="cpu")
    cfg.model = encoder.cfg
    query_rgb, match_rgb, match_right = (load_rgb(euroc / f) for f in ("left_img_1.png", "left_img_0.png",
                                                                          "right_img_0.png"))
    query, match = encoder.encode([query_rgb]), encoder.encode([match_rgb])
    result = PatchMatcher.from_config(cfg, encoder.geometry, query.grid).pair(query, match)
    left, right = load_euroc_sensor(euroc / "sensorLeft.yaml"), load_euroc_sensor(euroc / "sensorRight.yaml")
    rig, vcfg, hw = StereoRig.from_sensors(left, right), cfg.verification, query_rgb.shape[:2]

    def depth(points):
        return stereo_depth_at(match_rgb, match_right, rig, points, vcfg.max_depth_m)

    def run(depth_fn):
        views = View(left.camera, hw, query_rgb), View(left.camera, hw, match_rgb, depth_fn)
        return verify_candidate(result, 0, query.image_size, *views, vcfg, encoder.geometry.stride)

    cpu = torch.device("cpu")
    mono_s, mono = time_runs(lambda: run(None), repeats, cpu)
    stereo_s, stereo = time_runs(lambda: run(depth), repeats, cpu)
    sift_s, _ = time_runs(lambda: sift_features(query_rgb), repeats, cpu)
    views = View(left.camera, hw, query_rgb), View(left.camera, hw, match_rgb)
    guided = (result.patch_sizes, result.correspondences[0], query.image_size, *views, vcfg, encoder.geometry.stride)
    q_px, m_px = refined_matches(*guided)
    guided_s, _ = time_runs(lambda: refined_matches(*guided), repeats, cpu)  # features cached
    depth_s, _ = time_runs(lambda: depth(m_px), repeats, cpu)
    essential_s, _ = time_runs(lambda: estimate_pose(q_px, m_px, *views, vcfg), repeats, cpu)
    match_depth = depth(m_px)
    metric_views = views[0], View(left.camera, hw, match_rgb, lambda points: match_depth)
    pnp_s, _ = time_runs(lambda: estimate_pose(q_px, m_px, *metric_views, vcfg), repeats, cpu)
    return {
        "pair": "euroc left_img_1 -> left_img_0 (752x480), speed model 240x320, patch size 5",
        "patch_matches": int(result.inliers[0].sum()), "refined_matches": int(len(q_px)),
        "monocular_s": round(mono_s, 4), "stereo_s": round(stereo_s, 4),
        "monocular": {"status": mono.status, "inliers": mono.inliers},
        "stereo": {"status": stereo.status, "inliers": stereo.inliers},
        "parts_s": {"sift_one_image": round(sift_s, 4), "guided_matching": round(guided_s, 4), "stereo_depth": round(depth_s, 4),
                    "essential_and_covariance": round(essential_s, 4), "pnp_and_covariance": round(pnp_s, 4)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--top-k", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--workers", type=int, default=0,
                        help="matching.workers: threads scoring the candidates (0 = one per core, at most 8)")
    parser.add_argument("--no-reference", action="store_true", help="skip timing the official matcher")
    parser.add_argument("--no-verification", action="store_true", help="skip timing the relative-pose verification")
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    parser.add_argument("--datasets", type=Path, default=shared / "datasets", help="the shared datasets folder")
    parser.add_argument("--weights", type=Path, default=shared / "weights" / "vgg16_imagenet_conv5_3.pth",
                        help="ImageNet VGG16 conv weights (for the verification part's small model)")
    args = parser.parse_args()
    device = torch.device(args.device)
    workers = scoring_workers(args.workers)
    results = []
    for name in args.presets:
        preset = PRESETS[name]
        for top_k in args.top_k:
            query, cands = synthetic_descriptors(preset, top_k, device)
            row = {"preset": name, "matcher": preset["matcher"], "top_k": top_k, "dim": preset["dim"],
                   "patches": {str(p): int(q.shape[0]) for p, q in query.items()}}
            ours_s, our_order = time_runs(ours(preset, query, cands, args.workers), args.repeats, device)
            products_s, _ = time_runs(products_only(query, cands), args.repeats, device)
            fused_s, _ = time_runs(ours_fused(preset, query, cands, args.workers), args.repeats, device)
            row |= {"ours_s": round(ours_s, 5), "fused_s": round(fused_s, 5), "products_s": round(products_s, 5)}
            for backend in ("opencv", "batched"):  # the fused score's RANSAC per frame, both backends
                row[f"fused_{backend}_s"] = round(time_runs(ours_fused(preset, query, cands, args.workers, backend),
                                                            args.repeats, device)[0], 5)
            row["batched_over_opencv"] = round(row["fused_batched_s"] / row["fused_opencv_s"], 3)
            if workers > 1:  # the same on one thread: what matching.workers buys
                serial_s, _ = time_runs(ours(preset, query, cands, 1), args.repeats, device)
                fused_serial_s, _ = time_runs(ours_fused(preset, query, cands, 1), args.repeats, device)
                row |= {"ours_one_thread_s": round(serial_s, 5), "fused_one_thread_s": round(fused_serial_s, 5)}
            if not args.no_reference:
                reference_s, their_order = time_runs(reference(preset, query, cands), args.repeats, device)
                row["reference_s"] = round(reference_s, 5)
                row["ratio"] = round(ours_s / reference_s, 3)
                row["products_ratio"] = round(products_s / reference_s, 3)  # floor of an exact method
                row["same_order"] = bool(np.array_equal(our_order, their_order))
            results.append(row)
            del query, cands
    print(json.dumps({
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "matching_workers": workers,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "results": results,
        "verification": None if args.no_verification else verification(args.datasets, args.weights, args.repeats),
    }, indent=1))


if __name__ == "__main__":
    main()
