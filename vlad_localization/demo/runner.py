"""The end-to-end demo: model -> map -> the real ROS 2 node -> a revisit replayed over DDS.

Steps (all local, no download): (1) inputs: the generated street route of
:mod:`vlad_localization.demo.world` by default, or ``--data DIR`` with ``DIR/ref`` and
``DIR/query``; (2) backbone weights: ``--weights``, else the ImageNet VGG16 in
``../shared/weights`` if present, else a seeded random VGG16; (3) ``init-model`` (k-means + WPCA on
the mapping images); (4) ``build-map`` of the mapping traverse; (5) ``vlad_localization_node`` as a
subprocess on a private ROS_DOMAIN_ID; (6) every query image is published as a stamped
``sensor_msgs/Image``; loop closures are printed as the node publishes them; (7) a summary: recall@1
against the ground truth and publish -> ~/candidates latency.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlad_localization.images.frames import nanoseconds, seconds

REPO = Path(__file__).resolve().parents[2]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "vgg16_imagenet_conv5_3.pth"
NODE_NAME = "vlad_demo"
IMAGE_TOPIC = "/demo/camera/image_raw"
REVISIT_GAP_S = 120.0  # query stamps are put at least this long after the last mapping frame
CLUSTERS, PCS = 16, 128  # a small model, quick to fit on a CPU (with a 1000-sample PCA)


@dataclass
class DemoInputs:
    ref_dir: Path
    query_dir: Path
    poses_csv: Path | None
    truth: dict[int, int]  # query index -> reference index (the same place)
    description: str


def say(text: str = "") -> None:
    print(text, flush=True)


def prepare_inputs(work: Path, data: Path | None, frames: int, height: int, width: int) -> DemoInputs:
    if data is None:
        from vlad_localization.demo.world import generate_route

        route = generate_route(work / "route", num_frames=frames, height=height, width=width, seed=0)
        return DemoInputs(route.ref_dir, route.query_dir, route.poses_csv, dict(route.ground_truth),
                          f"DEFAULT INPUT: a generated synthetic street route ({frames} frames of "
                          f"{width}x{height}, demo/world.py), revisited {route.query_time_offset_s:.0f} s "
                          "later under different light and viewpoints")
    from vlad_localization.images.io import list_images

    ref, query = list_images(data / "ref"), list_images(data / "query")
    if not ref or not query:
        raise SystemExit(f"--data {data}: needs images in {data}/ref and {data}/query")
    ref_names = {p.name: i for i, p in enumerate(ref)}
    same_name = all(q.name in ref_names for q in query)
    truth = ({i: ref_names[q.name] for i, q in enumerate(query)} if same_name
             else {i: i for i in range(min(len(query), len(ref)))})
    poses = data / "poses.csv"
    return DemoInputs(data / "ref", data / "query", poses if poses.is_file() else None, truth,
                      f"your images: {len(ref)} mapping images in {data}/ref, {len(query)} queries in "
                      f"{data}/query (ground truth: same {'name' if same_name else 'index'})")


def resolve_weights(weights: Path | None, work: Path) -> tuple[Path, str]:
    if weights is not None:
        if not weights.is_file():
            raise SystemExit(f"--weights {weights} does not exist")
        return weights, f"backbone weights: {weights}"
    if SHARED_WEIGHTS.is_file():
        return SHARED_WEIGHTS, f"backbone weights: ImageNet VGG16 ({SHARED_WEIGHTS})"
    import torch

    from vlad_localization.model.backbones import build_backbone

    torch.manual_seed(0)
    path = work / "vgg16_random_seed0.pth"
    torch.save({f"features.{k}": v for k, v in build_backbone("vgg16").state_dict().items()}, path)
    return path, ("backbone weights: NONE FOUND - using a seeded RANDOM-INITIALISED VGG16 (no ImageNet "
                  "training; still a deterministic feature extractor that works on the synthetic route; "
                  "pass --weights vgg16.pth for real images)")


def build_model_and_map(inputs: DemoInputs, weights: Path, work: Path, height: int, width: int) -> tuple[Path, Path, Path]:
    """Writes the demo config, checkpoint and map under ``work``; returns their paths."""
    from vlad_localization.cli.main import main as cli
    from vlad_localization.images.io import list_images
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint

    config = work / "demo_config.yaml"
    config.write_text(yaml.safe_dump({"base": "speed", "name": "demo", "model": {
        "image_height": height, "image_width": width, "device": "cpu", "num_clusters": CLUSTERS, "num_pcs": PCS}}))
    checkpoint = work / "demo_model.pth.tar"
    t0 = time.monotonic()
    build_offtheshelf_checkpoint(weights, list_images(inputs.ref_dir), checkpoint, num_clusters=CLUSTERS, num_pcs=PCS,
                                 image_size=(height, width), device="cpu", seed=0, max_pca_samples=1000,
                                 kmeans_iterations=25, progress=False)
    say(f"[3/6] model: {checkpoint.name} (init-model: k-means + WPCA on the mapping images) in {time.monotonic() - t0:.0f} s")
    map_dir = work / "demo_map"
    args = ["build-map", "--checkpoint", str(checkpoint), "--config", str(config),
            "--images", str(inputs.ref_dir), "--out", str(map_dir), "--no-progress"]
    if inputs.poses_csv is not None:
        args += ["--poses", str(inputs.poses_csv)]
    t0 = time.monotonic()
    if cli(args) != 0:
        raise SystemExit("build-map failed (see above)")
    say(f"[4/6] map: {map_dir} in {time.monotonic() - t0:.0f} s")
    return config, checkpoint, map_dir


def query_frames(inputs: DemoInputs):
    """(stamp_ns, rgb) of the query traverse, stamped after the mapping traverse (a revisit)."""
    from vlad_localization.images.folder import iter_folder

    ref = list(iter_folder(inputs.ref_dir, inputs.poses_csv))
    query = list(iter_folder(inputs.query_dir, inputs.poses_csv))
    ref_stamps = [f.stamp_ns for f in ref]
    offset = max(0, max(ref_stamps) + nanoseconds(REVISIT_GAP_S) - min(f.stamp_ns for f in query))
    return ref_stamps, [(f.stamp_ns + offset, f.rgb) for f in query]


def run(args) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="vlad_demo_"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    say(f"vlad_localization demo (work directory {work})")
    inputs = prepare_inputs(work, args.data, args.frames, args.height, args.width)
    say(f"[1/6] input: {inputs.description}")
    weights, weights_text = resolve_weights(args.weights, work)
    say(f"[2/6] {weights_text}")
    config, checkpoint, map_dir = build_model_and_map(inputs, weights, work, args.height, args.width)
    ref_stamps, queries = query_frames(inputs)
    stamp_to_ref = {round(seconds(s), 6): i for i, s in enumerate(ref_stamps)}
    return replay_through_node(args, work, config, checkpoint, map_dir, inputs, queries, stamp_to_ref, t_start)


def replay_through_node(args, work, config, checkpoint, map_dir, inputs, queries, stamp_to_ref, t_start) -> int:
    from vlad_localization.ros.client import NodeClient, start_node, stop_node
    from vlad_localization.loop_closure import score_of
    from vlad_localization.ros.messages import parse_candidates

    domain = os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    params = {"map_path": map_dir, "checkpoint": checkpoint, "preset": config, "device": "cpu",
              "image_topics": [IMAGE_TOPIC], "qos_reliability": "reliable",
              "score_threshold": args.score_threshold, "min_time_gap_s": args.min_time_gap,
              "publish_match_image": False}
    log = work / "node.log"
    proc = start_node(params, name=NODE_NAME, log_path=log)
    say(f"[5/6] started vlad_localization_node (pid {proc.pid}, ROS_DOMAIN_ID {domain}, log {log})")
    latencies, hits, closures = [], 0, 0
    try:
        with NodeClient(node_name=NODE_NAME, image_topics=(IMAGE_TOPIC,)) as client:
            if not client.wait_connected(args.node_timeout) or proc.poll() is not None:
                say(log.read_text()[-3000:])
                raise SystemExit("the node did not come up (its log is above)")
            say(f"[6/6] replaying {len(queries)} query images on {IMAGE_TOPIC} over DDS ...")
            for i, (stamp_ns, rgb) in enumerate(queries):
                client.publish(rgb, stamp_ns)
                rec = client.wait_candidates(stamp_ns, args.frame_timeout)
                if rec is None:
                    if proc.poll() is not None:
                        say(log.read_text()[-3000:])
                        raise SystemExit(f"the node exited (code {proc.returncode}) during the replay (its log is above)")
                    say(f"  query {i:3d}: no answer within {args.frame_timeout:.0f} s")
                    continue
                latencies.append((rec.t - client.sent[stamp_ns]) * 1e3)
                rows = parse_candidates(rec.msg)
                best = stamp_to_ref.get(round(rows[0]["map_stamp"], 6)) if rows else None
                truth = inputs.truth.get(i)
                hits += int(best is not None and best == truth)
                closure = [lc for lc in client.get("loop_closure") if abs(lc.msg.data[0] - seconds(stamp_ns)) < 1e-6]
                if closure:
                    closures += 1
                    t_match = closure[0].msg.data[1]
                    row = next(r for r in rows if abs(r["map_stamp"] - t_match) < 1e-6)
                    ref = stamp_to_ref.get(round(t_match, 6))
                    mark = "correct" if ref == truth else f"WRONG (truth: ref {truth})"
                    say(f"  LOOP CLOSURE query {i:3d} t={seconds(stamp_ns):8.1f} s -> ref {ref:3d} "
                        f"t={t_match:6.1f} s  score {score_of(row['patch_score'], row['fused_score']):.3f}  "
                        f"patch score {row['patch_score']:.3f}  inliers {row['inliers']:.0f}  {mark}")
                elif rows:
                    say(f"  query {i:3d}: no loop closure (best ref {best}, score "
                        f"{score_of(rows[0]['patch_score'], rows[0]['fused_score']):.3f} < {args.score_threshold})")
    finally:
        took = stop_node(proc)
    n = len(queries)
    say("")
    say("summary")
    say(f"  input           {inputs.description.split(':')[0]}")
    say(f"  recall@1        {hits}/{n} = {hits / max(n, 1):.2f} (rank-1 keyframe is the ground-truth place)")
    say(f"  loop closures   {closures}/{n} published (score >= {args.score_threshold}, gap >= {args.min_time_gap} s)")
    if latencies:
        say(f"  latency         median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms "
            "(publish -> ~/candidates, CPU)")
    say(f"  node stopped    in {took:.2f} s (SIGINT); total demo time {time.monotonic() - t_start:.0f} s")
    return 0 if latencies else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlad_localization.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder with ref/ and query/ images (default: generated route)")
    p.add_argument("--weights", type=Path, default=None, help="VGG16 backbone weights (torchvision layout)")
    p.add_argument("--frames", type=int, default=24, help="frames of the generated route (default 24)")
    p.add_argument("--height", type=int, default=240, help="network input height (default 240)")
    p.add_argument("--width", type=int, default=320, help="network input width (default 320)")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="loop-closure threshold on the candidate score (fused P(same place), else patch score)")
    p.add_argument("--min-time-gap", type=float, default=60.0, help="loop-closure minimum time gap (s)")
    p.add_argument("--work", type=Path, default=None, help="work directory (default: a new temp dir)")
    p.add_argument("--node-timeout", type=float, default=60.0, help="seconds to wait for the node to start")
    p.add_argument("--frame-timeout", type=float, default=20.0, help="seconds to wait for each answer")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
