"""`vlad-localization encode`: images -> Patch-NetVLAD global and patch descriptors (.npz)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_config_args, load_cli_config

EPILOG = """\
Output (numpy .npz):
  global      N x D float32, L2-normalised global descriptors (D = num_pcs, or K*C without WPCA)
  patches_P   N x num_patches x D float32 for each patch size P, patches row-major over the
              patch grid (the official order)
  images      the input paths, in order
  grid        conv grid (H, W); image_size: network input (H, W)

Example:
  vlad-localization encode --checkpoint pittsburgh_WPCA512.pth.tar --config speed \\
      --out desc.npz frame_000.png frame_001.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="compute Patch-NetVLAD global + patch descriptors of images into an .npz",
        description="Compute Patch-NetVLAD global and multi-scale patch descriptors of images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="official-format checkpoint (e.g. pittsburgh_WPCA512.pth.tar or from init-model)")
    add_config_args(p)
    p.add_argument("--half", action="store_true", help="fp16 backbone on CUDA")
    p.add_argument("--out", required=True, type=Path, help="output .npz file")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..images.io import load_rgb
    from ..model.checkpoint import CheckpointError
    from ..model.encoder import Encoder
    from .main import UserError

    model_cfg = load_cli_config(args).model
    try:
        encoder = Encoder.from_checkpoint(args.checkpoint, model_cfg, device=args.device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    images = [load_rgb(p) for p in args.images]
    if model_cfg.image_height <= 0 or model_cfg.image_width <= 0:
        if len({im.shape for im in images}) > 1:
            raise UserError("images differ in size and the config keeps sizes (image_height/width 0): "
                            "encode them separately or set a fixed size")
    desc = encoder.encode(images)
    global_desc, patches = desc.numpy()
    arrays = {"global": global_desc}
    arrays.update({f"patches_{p}": v for p, v in patches.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out,
        images=np.array([str(p) for p in args.images]),
        grid=np.array(desc.grid),
        image_size=np.array(desc.image_size),
        **arrays,
    )
    print(f"wrote {args.out}: global {global_desc.shape}, "
          + ", ".join(f"patches_{p} {v.shape}" for p, v in patches.items()))
    return 0
