"""Encoding speed and peak memory of the Patch-NetVLAD presets, ours vs the official module.

Prints JSON: for each preset, the median per-image encode time (after a warm-up) and the peak RSS
of a fresh subprocess doing only that measurement; when ``patchnetvlad`` is importable, the
reference timed in the same run (same VGG16 conv stack, its ``PatchNetVLAD`` module, and its WPCA
as the 1x1 ``Conv2d`` that ``get_pca_encoding`` applies to the global and the patch descriptors)
and the ratios. Weights: the ImageNet VGG16 + random NetVLAD/WPCA of the official shapes (timing
does not depend on values).

    python benchmarks/encode.py --presets speed storage --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
PRESETS = {"performance": ([2, 5, 8], [1, 1, 1], 4096), "speed": ([5], [1], 512), "storage": ([5], [1], 128)}


def _build(preset: str, device: str, half: bool):
    import torch

    from vlad_localization.config import ModelConfig
    from vlad_localization.model.backbones import build_backbone
    from vlad_localization.model.checkpoint import load_module_state, read_checkpoint
    from vlad_localization.model.encoder import Encoder
    from vlad_localization.model.netvlad import PatchNetVLADPooling
    from vlad_localization.model.wpca import WPCA

    sizes, strides, num_pcs = PRESETS[preset]
    torch.manual_seed(0)
    backbone = build_backbone("vgg16")
    weights = SHARED / "weights" / "vgg16_imagenet_conv5_3.pth"
    if weights.is_file():
        contents = read_checkpoint(weights)
        load_module_state(backbone, contents.backbone_state, contents.path, "backbone")
    pooling = PatchNetVLADPooling(64, 512, patch_sizes=sizes, strides=strides)
    wpca = WPCA(64 * 512, num_pcs)
    wpca.weight_t.normal_(0, 0.01)
    cfg = ModelConfig(num_pcs=num_pcs, patch_sizes=sizes, strides=strides, device=device, half=half, batch_size=1)
    return Encoder(backbone, pooling, wpca, cfg, device)


def _image():
    import numpy as np

    from vlad_localization.images.io import load_rgb

    path = SHARED / "datasets" / "tokyo_pair" / "ref" / "tokyo_db.png"
    return load_rgb(path) if path.is_file() else np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(impl: str, preset: str, runs: int, device: str, half: bool) -> dict:
    """One measurement in this (fresh) process: median seconds per image and peak RSS."""
    import torch
    import torch.nn.functional as F

    encoder = _build(preset, device, half)
    image = _image()
    if impl == "ours":
        def step():
            return encoder.encode([image])
    else:
        from patchnetvlad.models.patchnetvlad import PatchNetVLAD

        sizes, strides, num_pcs = PRESETS[preset]
        ref = PatchNetVLAD(64, 512, patch_sizes=",".join(map(str, sizes)), strides=",".join(map(str, strides)))
        ref.load_state_dict(encoder.pooling.state_dict())
        conv = torch.nn.Conv2d(64 * 512, num_pcs, 1)
        conv.weight.data = encoder.wpca.conv_state()["WPCA.0.weight"]
        conv.bias.data = encoder.wpca.bias.clone()
        del encoder.wpca, encoder.pooling
        ref, conv = ref.to(encoder.device).eval(), conv.to(encoder.device).eval()

        def pca(v):  # models_generic.get_pca_encoding: WPCA(v[..., None, None]) = conv, flatten, L2
            return F.normalize(conv(v.unsqueeze(-1).unsqueeze(-1)).flatten(1), p=2, dim=-1)

        def step():
            with torch.no_grad():
                x = encoder.preprocess([image])  # the same fp16 backbone as ours under --half
                feats = encoder.backbone(x.half() if encoder.half else x.float()).float()
                local, glob = ref(feats)
                out = [pca(glob)] + [pca(t.permute(2, 0, 1).reshape(-1, t.size(1))) for t in local]
            return out

    if encoder.device.type == "cuda":  # the peak of the encoding, not of building the model
        torch.cuda.reset_peak_memory_stats(encoder.device)
    times = []
    for i in range(runs + 1):  # the first is the warm-up
        _sync(encoder.device)
        t0 = time.perf_counter()
        step()
        _sync(encoder.device)
        if i:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    result = {"median_s": round(statistics.median(times), 4), "runs": runs, "times_s": [round(t, 3) for t in times],
              "peak_rss_mb": round(peak / 2**20, 1)}
    if encoder.device.type == "cuda":
        result["images_per_s"] = round(1.0 / result["median_s"], 2)
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _measure(impl, preset, runs, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--presets", preset, "--runs", str(runs), "--device", args.device]
    if args.half:
        cmd.append("--half")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (after 1 warm-up)")
    parser.add_argument("--reference-runs", type=int, default=None,
                        help="timed runs for the (slow) reference (default: --runs; 1 for performance)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    parser.add_argument("--half", action="store_true", help="fp16 backbone on CUDA")
    parser.add_argument("--no-reference", action="store_true", help="skip the official implementation")
    parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.presets[0], args.runs, args.device, args.half)))
        return 0
    try:
        import patchnetvlad.models.patchnetvlad  # noqa: F401

        have_reference = not args.no_reference
    except ImportError:
        have_reference = False
    import torch

    report = {"image_size": [480, 640], "device": args.device, "half": args.half, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "presets": {}}
    for preset in args.presets:
        entry = {"ours": _measure("ours", preset, args.runs, args)}
        if have_reference:
            ref_runs = args.reference_runs or (1 if preset == "performance" else args.runs)
            entry["reference"] = _measure("reference", preset, ref_runs, args)
            if "median_s" in entry["ours"] and "median_s" in entry["reference"]:
                entry["time_ratio"] = round(entry["ours"]["median_s"] / entry["reference"]["median_s"], 3)
                entry["peak_rss_ratio"] = round(entry["ours"]["peak_rss_mb"] / entry["reference"]["peak_rss_mb"], 3)
        report["presets"][preset] = entry
        print(json.dumps({preset: entry}), file=sys.stderr, flush=True)
    report["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
