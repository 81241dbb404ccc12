"""Route statistics of real global descriptors, the constants behind ``mapdb.py --data routes``.

Encodes an ordered sequence of real keyframes (default: campus_loop_72, one robot loop, keyframes
~3 m apart, image_71 revisiting image_0) and prints one JSON object: the mean cosine of keyframes t
and t + k per lag k, the cosine of unrelated keyframes, and the revisit pair's cosine; ``raw`` as
encoded and ``centred`` after removing the component all descriptors share (the mean descriptor)
and re-normalising, which is what the isotropic synthetic generator models.

    python benchmarks/route_stats.py --checkpoint speed512.pth.tar [--config speed] [--images DIR]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from vlad_localization.config import load_config
from vlad_localization.images.io import list_images, load_rgb
from vlad_localization.model.encoder import Encoder

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLAD_SHARED", REPO.parent / "shared"))
LAGS = (1, 2, 3, 5, 10, 20)


def stats(x: np.ndarray, revisit: tuple[int, int], far: int) -> dict:
    sim = x @ x.T
    gap = np.abs(np.subtract.outer(np.arange(len(x)), np.arange(len(x))))
    unrelated = (gap > far) & (gap < len(x) - far)  # not near each other, nor across the loop's seam
    return {
        "lag_cos": {k: round(float(np.mean(np.diag(sim, k))), 3) for k in LAGS if k < len(x)},
        "unrelated_cos_mean": round(float(sim[unrelated].mean()), 3),
        "unrelated_cos_std": round(float(sim[unrelated].std()), 3),
        "revisit_cos": round(float(sim[revisit]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Patch-NetVLAD checkpoint (e.g. from init-model)")
    parser.add_argument("--config", default="speed", help="preset or YAML (default speed)")
    parser.add_argument("--images", default=str(SHARED / "datasets" / "campus_loop_72"), help="ordered keyframes")
    parser.add_argument("--revisit", type=int, nargs=2, default=[71, 0], help="indices of a revisit pair")
    parser.add_argument("--far", type=int, default=10, help="keyframes further apart than this are unrelated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg = load_config(args.config)
    encoder = Encoder.from_checkpoint(args.checkpoint, cfg.model, device=args.device)
    paths = list_images(args.images)
    x = np.concatenate([encoder.encode([load_rgb(p) for p in paths[i : i + 8]]).global_desc.cpu().numpy()
                        for i in range(0, len(paths), 8)])
    centred = x - x.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    revisit = tuple(args.revisit)
    print(json.dumps({"images": str(args.images), "keyframes": len(x), "dim": int(x.shape[1]),
                      "raw": stats(x, revisit, args.far), "centred": stats(centred, revisit, args.far)}, indent=1))


if __name__ == "__main__":
    main()
