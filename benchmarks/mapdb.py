"""Map database benchmark: global search latency, memory and recall vs map size, and map build
throughput vs the reference feature extraction. Prints one JSON object.

Search: synthetic L2-normalised maps (``--data``, both by default). ``clusters``: ``N / 20`` random
places, each visited 20 times, and near-duplicate revisits; ``routes``: mapping runs whose
descriptors drift from keyframe to keyframe, with the step and revisit similarities measured on real
descriptors (``ROUTE_STEP_COS``). Queries are revisits of random keyframes. For each size x dim: Flat (exact)
and, where affordable, IVF (nlist ~ 4 sqrt(N), trained on a subsample; an nprobe sweep) and HNSW32
(an efSearch sweep); latency is per single query (batch of one, as the node searches), memory is the
process RSS growth while building the index, recall@10 is against Flat, revisit@10 the fraction of
queries whose revisited keyframe is in the top 10. Combinations that exceed ``--mem-gb`` (vectors +
index) or the HNSW/IVF size limits are reported as skipped with the reason.

Live: the in-memory store of a run's own keyframes (``mapdb.LiveMap``) holding 0, 1k, 10k keyframes
(``--live-sizes``; synthetic descriptors of ``--live-dim`` x ``--live-patches``, 512 x 936 = the
speed preset at 640x480): median latency of one ``add``, of one ``search`` (k=10, stamp filter) and
of search + keyframes + patches of the top 10, bytes per keyframe (``nbytes``) and RSS growth per
1k keyframes; sizes over ``--mem-gb`` are skipped.

Build: ``build_map`` (decode, encode, float16 patch store, SQLite, thumbnails, index, atomic
publish) vs the reference ``feature_extract.py`` work (the official PatchNetVLAD pooling +
WPCA conv on the same checkpoint and input tensors, one float32 .npy per image and patch size),
keyframes/s and patch bytes per keyframe for both, on the same images in the same run.

    python benchmarks/mapdb.py [--sizes 1000 10000 100000 1000000] [--dims 512 4096]
        [--data clusters routes] [--checkpoint CKPT --config speed] [--images DIR]
        [--build-images 16] [--no-build] [--faiss-gpu] [--device cuda]
        [--no-search] [--no-live] [--live-sizes 0 1000 10000] [--live-dim 512] [--live-patches 936]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from vlad_localization.mapdb import GlobalIndex, Keyframe, LiveMap

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))


# ---------------------------------------------------------------------------------------- search
# Route statistics of real descriptors (benchmarks/route_stats.py: an off-the-shelf speed-preset
# model, 512-D, 640x480, on the campus_loop_72 keyframes ~3 m apart), after removing the component all
# descriptors share: keyframes t and t + k have cosine 0.53, 0.34, 0.22, 0.10 for k = 1, 2, 3, 5
# (~0.6^k) and the real revisit (image_71 -> image_0, 5.5 m apart) 0.41. Unrelated keyframes spread
# more than in the isotropic generator (std 0.079 vs 1/sqrt(512) = 0.044): the synthetic map is, if
# anything, easier than a real one.
ROUTE_STEP_COS = 0.6
ROUTE_REVISIT_COS = 0.4


def synthetic_clusters(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``clusters`` data: (database (n, dim), queries (n_queries, dim), each query's source row)
    of unit vectors: ``n / 20`` random place centres with 0.8 N(0, 1) noise per dim (visits of a
    place: cos ~0.6 to each other, ~0 to every other place), queries perturbed database vectors
    (cos ~0.96 to the source)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), dim), dtype=np.float32)
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 65536):  # chunked: keeps temporaries small at 1M x 512
        hi = min(n, lo + 65536)
        x[lo:hi] = centres[rng.integers(0, len(centres), hi - lo)]
        x[lo:hi] += 0.8 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        x[lo:hi] /= np.linalg.norm(x[lo:hi], axis=1, keepdims=True)
    return (x, *_revisits(x, rng, n_queries, 0.96))


def synthetic_routes(n: int, dim: int, n_queries: int, seed: int = 0, route_len: int = 1000,
                     step_cos: float = ROUTE_STEP_COS, revisit_cos: float = ROUTE_REVISIT_COS,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``routes`` data: mapping runs of ``route_len`` keyframes whose descriptors drift along the
    route, ``x_t = normalize(step_cos x_{t-1} + sqrt(1 - step_cos^2) u_t)`` (u_t a random unit
    vector), so keyframe t and t + k have cos ~ step_cos^k, as consecutive keyframes of a real map;
    runs are unrelated. Queries revisit a random keyframe with cos ``revisit_cos`` to it. Both
    constants are measured on real descriptors (see ``ROUTE_STEP_COS``)."""
    rng = np.random.default_rng(seed)
    routes = math.ceil(n / route_len)
    x = np.empty((routes * route_len, dim), np.float32)
    side = math.sqrt(1.0 - step_cos ** 2)
    cur = _unit_rows(rng, routes, dim)  # every run's first keyframe; the runs advance together
    for t in range(route_len):
        if t:
            cur = step_cos * cur + side * _unit_rows(rng, routes, dim)
            cur /= np.linalg.norm(cur, axis=1, keepdims=True)
        x[t::route_len] = cur
    x = x[:n]
    return (x, *_revisits(x, rng, n_queries, revisit_cos))


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _revisits(x: np.ndarray, rng: np.random.Generator, n_queries: int, cos: float) -> tuple[np.ndarray, np.ndarray]:
    """(unit queries with cosine ~``cos`` to random database rows (a revisit of that keyframe), those rows)."""
    src = rng.integers(0, len(x), n_queries)
    q = cos * x[src] + math.sqrt(1.0 - cos ** 2) * _unit_rows(rng, n_queries, x.shape[1])
    return q / np.linalg.norm(q, axis=1, keepdims=True), src


DATA = {"clusters": synthetic_clusters, "routes": synthetic_routes}


def rss() -> int:
    return psutil.Process().memory_info().rss


def per_query_ms(index: GlobalIndex, q: np.ndarray, k: int = 10, exact: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Median latency of single-query searches (ms) and the (Q, k) ids; ``exact`` re-scores a
    lossy index's shortlist as the map does."""
    index.search(q[:1], k, exact)  # warm-up
    times, ids = [], []
    for row in q:
        t = time.perf_counter()
        _, i = index.search(row[None], k, exact)
        times.append((time.perf_counter() - t) * 1e3)
        ids.append(i[0])
    return statistics.median(times), np.array(ids)


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth)]))


def found(ids: np.ndarray, src: np.ndarray) -> float:
    """revisit@10: the fraction of queries whose source keyframe (the place revisited) is in the top 10."""
    return round(float(np.mean([s in row for row, s in zip(ids, src)])), 4)


def on_gpu(index: GlobalIndex, args) -> dict:
    """With ``--faiss-gpu``, move the index's search to GPU 0 (faiss-gpu; a spec without a GPU
    version stays on the CPU, with a warning) and say where it searches."""
    return {"faiss_gpu": index.to_gpu()} if args.faiss_gpu else {}


def bench_search(data: str, n: int, dim: int, args) -> list[dict]:
    rows = []
    need = n * dim * 4 * 2  # data + index copy
    if need > args.mem_gb * 1e9:
        return [{"n": n, "dim": dim, "index": "all", "skipped": f"needs ~{need / 1e9:.1f} GB > --mem-gb {args.mem_gb}"}]
    x, q, src = DATA[data](n, dim, args.queries)
    m0 = rss()
    t = time.perf_counter()
    flat = GlobalIndex.build("Flat", x)
    row = {"n": n, "dim": dim, "index": "Flat", "build_s": round(time.perf_counter() - t, 2),
           "index_mb": round((rss() - m0) / 1e6, 1)} | on_gpu(flat, args)
    row["ms_per_query"], truth = per_query_ms(flat, q)
    rows.append(row | {"ms_per_query": round(row["ms_per_query"], 3), "recall@10": 1.0,
                       "revisit@10": found(truth, src)})
    del flat
    gc.collect()
    specs = []
    if dim in args.approx_dims and n >= 10_000:
        nlist = min(args.max_nlist, 2 ** round(math.log2(4 * math.sqrt(n))))
        specs.append((f"IVF{nlist},Flat", "nprobe", args.nprobes))
        specs.append((f"IVF{nlist},PQ{dim // 8}", "nprobe", args.nprobes))  # 64 B/keyframe at 512-D, re-scored exactly
        if n <= args.hnsw_max:
            specs.append(("HNSW32", "ef_search", args.efs))
        else:
            rows.append({"n": n, "dim": dim, "index": "HNSW32", "skipped": f"n > --hnsw-max {args.hnsw_max} (build time on this CPU)"})
    elif n >= 10_000:
        rows.append({"n": n, "dim": dim, "index": "IVF/HNSW", "skipped": f"dim {dim} not in --approx-dims {args.approx_dims}"})
    for spec, param, values in specs:
        m0 = rss()
        t = time.perf_counter()
        index = GlobalIndex.create(spec, dim, n)
        if spec.startswith("IVF"):  # k-means on a subsample (64 points per list)
            index.train(x[np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False)])
        index.add(x, np.arange(n))
        build_s = time.perf_counter() - t
        mem = (rss() - m0) / 1e6
        placed = on_gpu(index, args)
        for v in values:
            index.set_params(**{param: v})
            ms, ids = per_query_ms(index, q, exact=x)
            rows.append({"n": n, "dim": dim, "index": spec, param: v, "build_s": round(build_s, 2),
                         "index_mb": round(mem, 1), "ms_per_query": round(ms, 3), "recall@10": round(recall(ids, truth), 4),
                         "revisit@10": found(ids, src)} | placed | ({"rescored_exactly": True} if index.lossy else {}))
        del index
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------- live
def bench_live(n: int, args, reps: int = 50) -> dict:
    """A LiveMap filled with ``n`` synthetic keyframes: add / search / read latency, bytes, RSS."""
    dim, patches = args.live_dim, args.live_patches
    row = dim * 4 + patches * dim * 2
    if (n + reps) * row > args.mem_gb * 1e9:
        return {"keyframes": n, "skipped": f"needs ~{(n + reps) * row / 1e9:.1f} GB > --mem-gb {args.mem_gb:.1f}"}
    identity = {"backbone": "vgg16", "patch_sizes": [5], "strides": [1]}
    rng = np.random.default_rng(0)
    patch = rng.standard_normal((patches, dim)).astype(np.float16)  # copied into the store per keyframe
    live = LiveMap(identity, max_keyframes=n + reps, thumbnails=False)

    def add(i: int, g: np.ndarray) -> None:
        live.add(g, {5: patch}, Keyframe(-1, stamp_ns=i * 10**8, extra={"travel_m": 0.3 * i}), None, (30, 40), (480, 640))

    gc.collect()
    m0 = rss()
    for lo in range(0, n, 4096):
        for i, g in zip(range(lo, n), _unit_rows(rng, min(4096, n - lo), dim)):
            add(i, g)
    grown = rss() - m0
    out = {"keyframes": n, "dim": dim, "patches": patches,
           "bytes_per_keyframe": live.nbytes // n if n else None,
           "rss_mb_per_1k_keyframes": round(grown / n * 1000 / 1e6, 1) if n else None}
    q = _unit_rows(rng, reps, dim)
    adds, searches, reads = [], [], []
    for r in range(reps):
        t = time.perf_counter()
        add(n + r, q[r])
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        _, ids = live.search(q[r], 10, max_stamp_ns=(n + r - 30) * 10**8)  # skip the last 30 keyframes
        searches.append(time.perf_counter() - t)
        live.keyframes(ids[0])
        live.patches(ids[0])
        reads.append(time.perf_counter() - t)
    live.close()
    return out | {f"{name}_ms": round(statistics.median(v) * 1e3, 3)
                  for name, v in (("add", adds), ("search", searches), ("search_read_top10", reads))}


# ---------------------------------------------------------------------------------------- build
def vgg16_conv5_3_layers() -> list:
    """torchvision's ``vgg16().features`` minus the last ReLU + max-pool (what get_backend keeps),
    built here because torchvision is not a dependency; the checkpoint supplies the weights."""
    import torch.nn as nn

    layers, channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return layers[:-2]


class L2Norm:
    """models_generic.L2Norm(dim=-1) as a plain callable module."""

    def __new__(cls):
        import torch

        class _L2Norm(torch.nn.Module):
            def forward(self, x):
                return torch.nn.functional.normalize(x, p=2, dim=-1)

        return _L2Norm()


def reference_extract(images: list[np.ndarray], checkpoint: Path, cfg, out_dir: Path, device: str = "cpu") -> dict:
    """The reference feature_extract.py work: official modules, one float32 .npy per image/size."""
    import torch
    from patchnetvlad.models.patchnetvlad import PatchNetVLAD

    from vlad_localization.model.preprocess import to_network_input

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    num_clusters = int(state["pool.centroids"].shape[0])
    num_pcs = int(state["WPCA.0.weight"].shape[0])
    # get_model()'s composition (models_generic itself imports torchvision, not installed here)
    model = torch.nn.Module()
    model.encoder = torch.nn.Sequential(*vgg16_conv5_3_layers())
    model.pool = PatchNetVLAD(num_clusters=num_clusters, dim=512, vladv2=False,
                              patch_sizes=",".join(map(str, cfg.model.patch_sizes)),
                              strides=",".join(map(str, cfg.model.strides)))
    model.WPCA = torch.nn.Sequential(torch.nn.Conv2d(num_clusters * 512, num_pcs, 1), torch.nn.Flatten(), L2Norm())

    def get_pca_encoding(model, vlad):  # as models_generic.get_pca_encoding
        return model.WPCA(vlad.unsqueeze(-1).unsqueeze(-1))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing, f"reference model lacks checkpoint weights: {missing}"
    model.eval().to(device)
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(images), cfg.model.batch_size):
            x = to_network_input(images[lo: lo + cfg.model.batch_size], cfg.model.image_height, cfg.model.image_width)
            local, glob = model.pool(model.encoder(x.to(device)))
            get_pca_encoding(model, glob).cpu().numpy()
            for size, this in zip(cfg.model.patch_sizes, local):
                pca = get_pca_encoding(model, this.permute(2, 0, 1).reshape(-1, this.size(1)))
                pca = pca.reshape(this.size(2), this.size(0), num_pcs).permute(1, 2, 0).cpu().numpy()
                for i in range(len(pca)):
                    np.save(out_dir / f"patchfeats_psize{size}_{lo + i}.npy", pca[i])
    seconds = time.perf_counter() - start
    npy = sum(p.stat().st_size for p in out_dir.glob("*.npy"))
    return {"seconds": round(seconds, 2), "images_per_s": round(len(images) / seconds, 2),
            "patch_bytes_per_keyframe": npy // len(images)}


def bench_build(args) -> dict:
    from vlad_localization.config import load_config
    from vlad_localization.images import Frame, list_images, load_rgb
    from vlad_localization.mapdb import MapDatabase, build_map
    from vlad_localization.model.encoder import Encoder

    cfg = load_config(args.config)
    cfg.model.device = args.device
    tmp = Path(tempfile.mkdtemp(prefix="mapdb_bench_"))
    paths = list_images(args.images)[: args.build_images]
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is None:  # an off-the-shelf model from the shared VGG16 weights
        from vlad_localization.model.init_model import build_offtheshelf_checkpoint

        checkpoint = build_offtheshelf_checkpoint(
            SHARED / "weights" / "vgg16_imagenet_conv5_3.pth", paths, tmp / "model.pth.tar",
            num_clusters=cfg.model.num_clusters, num_pcs=min(cfg.model.num_pcs or 512, 128 * len(paths)),
            patch_sizes=cfg.model.patch_sizes, strides=cfg.model.strides,
            image_size=(cfg.model.image_height, cfg.model.image_width), device="cpu", seed=0, progress=False)
    encoder = Encoder.from_checkpoint(checkpoint, cfg.model, args.device)
    cfg.model.num_clusters, cfg.model.num_pcs = encoder.cfg.num_clusters, encoder.cfg.num_pcs
    images = [load_rgb(p) for p in paths]
    frames = [Frame(stamp_ns=i * 10**9, source=str(p), image=img) for i, (p, img) in enumerate(zip(paths, images))]
    encoder.encode(images[:1])  # warm-up (the reference gets one too): first-call cost excluded
    summary = build_map(tmp / "map", frames, encoder, cfg, ["bench"], progress=False)
    with MapDatabase.open(tmp / "map") as db:
        stats = db.stats()
    ref_dir = tmp / "reference"
    ref_dir.mkdir()
    reference_extract(images[:1], checkpoint, cfg, ref_dir, str(encoder.device))  # its warm-up, as ours had
    for old in ref_dir.glob("*.npy"):
        old.unlink()
    reference = reference_extract(images, checkpoint, cfg, ref_dir, str(encoder.device))
    shutil.rmtree(tmp, ignore_errors=True)
    ours = {"seconds": round(summary.seconds, 2), "keyframes_per_s": round(summary.keyframes_per_s, 2),
            "patch_bytes_per_keyframe": stats["patch_bytes_per_keyframe"], "map_bytes": summary.bytes}
    return {
        "images": len(images), "image_dir": str(args.images), "checkpoint": str(checkpoint), "device": str(encoder.device),
        "model": encoder.identity() | {"checkpoint_sha256": encoder.identity()["checkpoint_sha256"][:12]},
        "ours_build_map": ours, "reference_feature_extract": reference,
        "throughput_ratio": round(ours["keyframes_per_s"] / reference["images_per_s"], 3),
        "patch_size_ratio": round(ours["patch_bytes_per_keyframe"] / reference["patch_bytes_per_keyframe"], 4),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    p.add_argument("--dims", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--approx-dims", type=int, nargs="+", default=[512], help="dims that get IVF/HNSW runs")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--data", choices=sorted(DATA), nargs="+", default=["clusters", "routes"],
                   help="synthetic maps: clusters (random places, each visited 20 times; near-duplicate "
                        "revisits) and/or routes (descriptors drifting along mapping runs, step and "
                        "revisit similarity measured on real descriptors); default both")
    p.add_argument("--mem-gb", type=float, default=psutil.virtual_memory().available / 1e9 * 0.5)
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest map that gets an HNSW build")
    p.add_argument("--max-nlist", type=int, default=4096)
    p.add_argument("--nprobes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--efs", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--no-build", action="store_true", help="skip the build-throughput part")
    p.add_argument("--no-search", action="store_true", help="skip the global-search part")
    p.add_argument("--no-live", action="store_true", help="skip the live-store part")
    p.add_argument("--live-sizes", type=int, nargs="+", default=[0, 1000, 10_000], help="keyframes already in the live store")
    p.add_argument("--live-dim", type=int, default=512)
    p.add_argument("--live-patches", type=int, default=936, help="patches per keyframe (936: patch 5 at 640x480)")
    p.add_argument("--checkpoint", help="model for the build part (default: an off-the-shelf one, built here)")
    p.add_argument("--config", default="speed", help="preset/YAML for the build part")
    p.add_argument("--images", default=str(SHARED / "datasets" / "campus_loop_72"))
    p.add_argument("--build-images", type=int, default=16)
    p.add_argument("--device", default="cpu", help="torch device of the build part, ours and the reference (cpu, cuda, cuda:N)")
    p.add_argument("--faiss-gpu", action="store_true", help="search on GPU 0 (needs faiss-gpu; what cannot move stays on the CPU)")
    args = p.parse_args(argv)
    import faiss
    import torch

    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_avg_1m": round(os.getloadavg()[0], 2), "faiss": faiss.__version__,
                          "faiss_threads": faiss.omp_get_max_threads(), "torch": torch.__version__},
              "search": []}
    for data in [] if args.no_search else args.data:
        for dim in args.dims:
            for n in args.sizes:
                print(f"search {data} n={n} dim={dim} ...", file=sys.stderr, flush=True)
                result["search"].extend({"data": data} | row for row in bench_search(data, n, dim, args))
                gc.collect()
    if not args.no_live:
        result["live"] = []
        for n in args.live_sizes:
            print(f"live store n={n} ...", file=sys.stderr, flush=True)
            result["live"].append(bench_live(n, args))
            gc.collect()
    if not args.no_build:
        print("build throughput ...", file=sys.stderr, flush=True)
        result["build"] = bench_build(args)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
