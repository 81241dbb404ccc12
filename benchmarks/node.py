"""Benchmark of the running ROS 2 node (real DDS, node in its own process), per preset.

For each preset: an off-the-shelf checkpoint and a map of every 3rd campus_loop_72 image (24
keyframes; ImageNet VGG16 from ../shared/weights), then ``--duration`` s of 30 Hz rgb8 input (the
72 campus images, cycled). Reports end-to-end latency (publish -> ~/candidates received),
processed rate, frames dropped by the node (newest-frame policy) and the node's RSS during the
input (first vs second half: bounded memory). Prints JSON.

``--online``: the online loop-closure mode instead. The node in ``loop_closure`` mode (no map) under
the same 30 Hz input, and the per-frame detector in-process with 0, 1k and 10k keyframes already in
the run's store (real campus descriptors, replicated with noise; a DDS-free measurement of what
the store's size costs): processed rate, latency and RSS growth per 1k keyframes.

    python benchmarks/node.py [--presets speed,performance,storage] [--duration 20] [--device cuda [--half]]
        [--online [--prefill 0,1000,10000] [--no-node]] [--image-size 240x320] [--out node.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
CAMPUS = SHARED / "datasets" / "campus_loop_72"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_conv5_3.pth"
PCA_SAMPLES = 1000  # WPCA fit samples (caps num_pcs at 999: a benchmark of the node, not of retrieval)
TOPIC = "/bench/image_raw"
NAME = "vlad_bench"


def prepare(preset: str, work: Path, image_hw: tuple[int, int] | None) -> tuple[Path, Path, Path]:
    from vlad_localization.cli.main import main as cli
    from vlad_localization.config import load_config
    from vlad_localization.images.io import list_images
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint

    cfg = load_config(preset)
    overrides = {"base": preset, "name": f"bench-{preset}", "model": {"device": "cpu"}}
    if image_hw:
        overrides["model"].update(image_height=image_hw[0], image_width=image_hw[1])
        cfg.model.image_height, cfg.model.image_width = image_hw
    map_images = work / "map_images"  # every 3rd keyframe: the benchmark is of the node, not retrieval
    if not map_images.is_dir():
        map_images.mkdir()
        for path in list_images(CAMPUS)[::3]:
            (map_images / path.name).symlink_to(path)
    config = work / f"{preset}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    checkpoint = work / f"{preset}.pth.tar"
    build_offtheshelf_checkpoint(WEIGHTS, list_images(map_images), checkpoint, num_clusters=cfg.model.num_clusters,
                                 num_pcs=cfg.model.num_pcs, patch_sizes=cfg.model.patch_sizes, strides=cfg.model.strides,
                                 image_size=(cfg.model.image_height, cfg.model.image_width), device="cpu",
                                 max_pca_samples=PCA_SAMPLES, kmeans_iterations=25, progress=False)
    map_dir = work / f"{preset}_map"
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON report
        assert cli(["build-map", "--checkpoint", str(checkpoint), "--config", str(config), "--images", str(map_images),
                    "--poses", str(CAMPUS / "data.csv"), "--out", str(map_dir), "--no-progress"]) == 0
    return config, checkpoint, map_dir


def sample_rss(pid: int, stop: threading.Event, out: list, period: float = 0.5) -> None:
    proc = psutil.Process(pid)
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            out.append((round(time.monotonic() - t0, 2), proc.memory_info().rss / 2**20))
        except psutil.Error:
            return
        stop.wait(period)


def cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of the node process and of each of its child processes (the
    inference process, multiprocessing's resource tracker), by pid."""
    out = {}
    try:
        root = psutil.Process(pid)
        for proc in [root] + root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
    except psutil.Error:
        pass
    return out


def run_preset(preset: str, work: Path, duration: float, rate_hz: float, image_hw, device: str = "cpu",
               fp16: bool = False, online: bool = False) -> dict:
    from vlad_localization.images.io import list_images, load_rgb
    from vlad_localization.ros.client import NodeClient, start_node, stop_node
    from vlad_localization.ros.diagnostics import parse_diagnostics

    t0 = time.monotonic()
    config, checkpoint, map_dir = prepare(preset, work, image_hw)
    prep_s = time.monotonic() - t0
    images = [load_rgb(p) for p in list_images(CAMPUS)]
    log = work / f"{preset}_node.log"
    mode = {"mode": "loop_closure", "min_time_gap_s": 1.0} if online else {"mode": "localize"}
    proc = start_node({"map_path": map_dir, "checkpoint": checkpoint, "preset": config, "device": device, "half": fp16,
                       "image_topics": [TOPIC], "qos_reliability": "best_effort",
                       "publish_match_image": False, **mode}, name=NAME, log_path=log)
    rss, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(proc.pid, stop, rss), daemon=True)
    sampler.start()
    try:
        with NodeClient(node_name=NAME, image_topics=(TOPIC,), reliable=False) as client:
            if not client.wait_connected(120):
                raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")
            client.publish(images[0], 1)  # warm-up frame
            client.wait_candidates(1, 60)
            client.clear()
            rss_start = len(rss)
            cpu_start = cpu_seconds(proc.pid)
            stamps, period, t_start = [], 1.0 / rate_hz, time.monotonic()
            i = 0
            while time.monotonic() - t_start < duration:
                # distinct stamps: 1 ms apart, or at the camera's rate online (the run's time gap is real time)
                stamp = 10**12 + i * round(10**9 / rate_hz) if online else (1_000_000 + i) * 10**9 // 1000
                client.publish(images[i % len(images)], stamp)
                stamps.append(stamp)
                i += 1
                time.sleep(max(0.0, t_start + i * period - time.monotonic()))
            sent_s = time.monotonic() - t_start
            rss_end = len(rss)
            time.sleep(3.0)  # let the last frame finish
            cpu_end = cpu_seconds(proc.pid)
            latencies = []
            for s in stamps:
                rec = client.candidates_for(s)
                if rec is not None:
                    latencies.append((rec.t - client.sent[s]) * 1e3)
            diag = [parse_diagnostics(r.msg, f"{NAME}: loop closure") for r in client.get("diagnostics")]
            diag = [d for d in diag if d]
    finally:
        took = stop_node(proc)
        stop.set()
        sampler.join(2)
    mem = [m for _, m in rss[rss_start:rss_end]]  # while input was flowing (after warm-up)
    half = len(mem) // 2
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    last = diag[-1] if diag else {}
    cpu = {"node": cpu_end.get(proc.pid, 0.0) - cpu_start.get(proc.pid, 0.0),
           "children": sum(t - cpu_start.get(pid, 0.0) for pid, t in cpu_end.items() if pid != proc.pid)}
    return {
        "preset": preset,
        "device": device,
        "half": fp16,
        "image_size_hw": list(image_hw) if image_hw else None,
        "prepare_s": round(prep_s, 1),
        "input_rate_hz": round(len(stamps) / sent_s, 1),
        "frames_sent": len(stamps),
        "frames_answered": len(latencies),
        "processed_rate_hz": round(len(latencies) / sent_s, 2),
        "latency_ms": {"median": round(statistics.median(latencies), 1) if latencies else None,
                       "p95": round(q[18], 1), "min": round(min(latencies), 1) if latencies else None,
                       "max": round(max(latencies), 1) if latencies else None},
        "mode": mode["mode"],
        # CPU seconds (user + system) per answered frame during the input and its 3 s tail: the node
        # process, its child processes (the inference process), and both
        "cpu_s_per_frame": {k: round(v / max(len(latencies), 1), 4) for k, v in
                            {**cpu, "total": cpu["node"] + cpu["children"]}.items()},
        "node_diagnostics": {k: last.get(k) for k in ("device", "gpu_memory_mb", "dropped", "processed", "latency_encode_ms",
                                                     "latency_search_ms", "latency_rerank_ms", "latency_total_ms",
                                                     "run_keyframes", "run_bytes")},
        "rss_mb": {"at_start": round(mem[0], 1) if mem else None,
                   "first_half_median": round(statistics.median(mem[:half]), 1) if half else None,
                   "second_half_median": round(statistics.median(mem[half:]), 1) if half else None,
                   "first_half_max": round(max(mem[:half]), 1) if half else None,
                   "second_half_max": round(max(mem[half:]), 1) if mem else None,
                   "end": round(mem[-1], 1) if mem else None, "samples": len(mem),
                   "after_stop_input_s": [list(x) for x in rss[rss_end:][-1:]]},
        # no growth: the second half's typical RSS is not above the first's (per-frame peaks vary)
        "memory_bounded": bool(half and statistics.median(mem[half:]) <= statistics.median(mem[:half]) * 1.05 + 20),
        "shutdown_s": round(took, 2),
    }


def run_store_sizes(preset: str, work: Path, image_hw, device: str, prefill: list[int], frames: int = 15,
                    seed: int = 0, half: bool = False) -> dict:
    """The detector in loop_closure mode with ``prefill`` keyframes already in the run's store:
    per-frame latency and rate, and the process RSS as the store grows (no DDS)."""
    import numpy as np

    from vlad_localization.config import apply_overrides, load_config
    from vlad_localization.detector import LoopClosureDetector
    from vlad_localization.images.io import list_images, load_rgb
    from vlad_localization.mapdb.metadata import Keyframe
    from vlad_localization.mapdb.patch_store import PATCH_DTYPE

    config, checkpoint, _ = prepare(preset, work, image_hw)
    cfg = apply_overrides(load_config(config), {
        "model.device": device, "model.half": half, "loop_closure.mode": "loop_closure", "loop_closure.score_threshold": 0.0,
        "loop_closure.max_keyframes": max(prefill) + frames + 1, "map.min_time_gap_s": 1e6})  # queries insert ~none
    det = LoopClosureDetector.from_config(cfg, checkpoint)
    images = [load_rgb(p) for p in list_images(CAMPUS)]
    real = [det.localizer.encode(im) for im in images[:24]]
    real = [(d.numpy()[0][0], {p: a[0].astype(PATCH_DTYPE) for p, a in d.numpy()[1].items()}, d) for d in real]
    rng = np.random.default_rng(seed)
    proc = psutil.Process()
    store, rows, rss = det.run_map, [], []
    rss.append((0, proc.memory_info().rss / 2**20))
    query_stamp = 10**7 * 10**9
    for target in sorted(prefill):
        while store.size < target:
            g, patches, d = real[store.size % len(real)]
            g = g + rng.normal(0, 0.05, g.shape).astype(np.float32)
            g /= np.linalg.norm(g)
            store.add(g, patches, Keyframe(id=-1, stamp_ns=store.size * 10**9), grid=d.grid, image_size=d.image_size)
            if store.size % 1000 == 0:
                rss.append((store.size, proc.memory_info().rss / 2**20))
        timings, t0 = [], time.perf_counter()
        for i in range(frames):
            query_stamp += 10**9
            timings.append(det.process(query_stamp, images[24 + i % 48]).timings)
        wall = time.perf_counter() - t0
        rows.append({"keyframes_in_store": target, "processed_rate_hz": round(frames / wall, 2),
                     **{f"median_{k}": round(statistics.median(t[k] for t in timings), 2)
                        for k in ("encode_ms", "search_ms", "rerank_ms", "insert_ms", "total_ms")}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    det.release()
    growth = None
    if len(rss) > 2:
        x, y = np.array([r[0] for r in rss[1:]], float), np.array([r[1] for r in rss[1:]], float)
        growth = round(float(np.polyfit(x / 1000, y, 1)[0]), 1)
    return {"preset": preset, "device": device, "half": half, "image_size_hw": list(image_hw) if image_hw else None,
            "bytes_per_keyframe": store.nbytes // max(store.size, 1), "rss_growth_mb_per_1k_keyframes": growth,
            "rss_mb_by_keyframes": [[k, round(m, 1)] for k, m in rss], "by_store_size": rows}


def shared_data_and_domain() -> bool:
    """False (said on stderr) without the shared data; else a ROS_DOMAIN_ID of the benchmarks' own."""
    if not CAMPUS.is_dir() or not WEIGHTS.is_file():
        print(f"needs {CAMPUS} and {WEIGHTS} (set VLAD_SHARED)", file=sys.stderr)
        return False
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(215, 232)))
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="speed,storage,performance")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of input per preset")
    parser.add_argument("--rate", type=float, default=30.0, help="input rate (Hz)")
    parser.add_argument("--image-size", default=None, help="HxW network input (default: the preset's)")
    parser.add_argument("--device", default="cpu", help="the node's device parameter: cpu, cuda, cuda:N, auto")
    parser.add_argument("--half", action="store_true", help="the node's half parameter: fp16 encoder on CUDA")
    parser.add_argument("--online", action="store_true",
                        help="online loop-closure mode: the node without a map, and the detector with a filled store")
    parser.add_argument("--prefill", default="0,1000,10000", help="--online: keyframes already in the run's store")
    parser.add_argument("--no-node", action="store_true",
                        help="--online: only the in-process detector with a filled store (no ROS 2 / DDS needed)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not shared_data_and_domain():
        return 2
    image_hw = tuple(int(v) for v in args.image_size.split("x")) if args.image_size else None
    results = []
    with tempfile.TemporaryDirectory(prefix="vlad_bench_node_") as tmp:
        for preset in args.presets.split(","):
            if args.online and args.no_node:
                results.append({"preset": preset, "device": args.device})
            else:
                results.append(run_preset(preset, Path(tmp), args.duration, args.rate, image_hw, args.device,
                                          args.half, args.online))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            if args.online:
                prefill = [int(v) for v in args.prefill.split(",")]
                results[-1]["store_sizes"] = run_store_sizes(preset, Path(tmp), image_hw, args.device, prefill,
                                                             half=args.half)
                detector = results[-1]["store_sizes"]["by_store_size"][0]
                if "processed_rate_hz" in results[-1] and detector["keyframes_in_store"] == 0:
                    # the node's processed rate over the detector's in-process rate (empty store)
                    results[-1]["node_to_detector_rate"] = round(
                        results[-1]["processed_rate_hz"] / detector["processed_rate_hz"], 3)
    report = {"benchmark": "node-online" if args.online else "node",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "input": f"campus_loop_72 426x240 rgb8 at {args.rate} Hz, best_effort depth 1", "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
