"""`vlad-localization init-model`: build an off-the-shelf Patch-NetVLAD checkpoint (no training)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import BACKBONES
from .common import add_config_args

EPILOG = """\
What it does: samples VGG16/ResNet conv descriptors from your images, clusters them with k-means
(faiss) to initialise the NetVLAD layer as the official code does, then fits the PCA-whitening
(WPCA) on the patch and global descriptors of the same images. The result uses the official
checkpoint layout, so `encode`, `build-map` and the official Patch-NetVLAD code can load it.

Example:
  vlad-localization init-model --backbone-weights vgg16_imagenet_conv5_3.pth \\
      --images map_images/ --num-clusters 64 --num-pcs 512 --config speed --out model.pth.tar

Use images like those you will localise in (a few hundred map images are plenty). With few
images --num-pcs is capped to the number of VLAD samples - 1 (with a warning).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "init-model",
        help="build an off-the-shelf Patch-NetVLAD checkpoint from ImageNet backbone weights",
        description="Build an off-the-shelf Patch-NetVLAD checkpoint (k-means NetVLAD init + WPCA).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backbone-weights", required=True, type=Path, metavar="W",
                   help="ImageNet backbone state dict (torchvision keys, e.g. features.N.* for VGG16) "
                        "or an existing Patch-NetVLAD checkpoint whose encoder is reused")
    p.add_argument("--images", required=True, type=Path, nargs="+", metavar="DIR",
                   help="folder(s) of images (or image files) to cluster and fit the WPCA on")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint, e.g. model.pth.tar")
    p.add_argument("--backbone", default=None, choices=tuple(BACKBONES),
                   help="backbone architecture (default: the config's, vgg16)")
    add_config_args(p, device=False)
    p.add_argument("--num-clusters", type=int, default=None, help="NetVLAD clusters K (default: config's, 64)")
    p.add_argument("--num-pcs", type=int, default=None,
                   help="WPCA output dimension (default: config's; 0 = no WPCA layer)")
    p.add_argument("--vladv2", action="store_true", help="vladv2 soft-assignment (with bias)")
    p.add_argument("--image-height", type=int, default=None, help="network input height (default: config's)")
    p.add_argument("--image-width", type=int, default=None, help="network input width (default: config's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling and k-means")
    p.add_argument("--max-descriptors", type=int, default=50_000,
                   help="conv descriptors sampled for k-means (the reference uses 50000)")
    p.add_argument("--max-pca-samples", type=int, default=10_000,
                   help="VLAD vectors used to fit the WPCA (memory/time grow with it)")
    p.set_defaults(func=run)


def _image_files(items: list[Path]) -> list[Path]:
    from ..images.io import IMAGE_SUFFIXES, list_images

    files: list[Path] = []
    for item in items:
        if item.is_dir():
            files += list_images(item)
        elif item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: not an image folder or image file")
    return files


def run(args) -> int:
    from ..config import ConfigError, load_config
    from ..model.checkpoint import CheckpointError
    from ..model.init_model import build_offtheshelf_checkpoint
    from .main import UserError

    try:
        model = load_config(args.config).model
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    images = _image_files(args.images)
    if not images:
        raise UserError(f"no images found in {', '.join(map(str, args.images))}")
    num_pcs = model.num_pcs if args.num_pcs is None else (args.num_pcs or None)
    try:
        out = build_offtheshelf_checkpoint(
            args.backbone_weights,
            images,
            args.out,
            backbone=args.backbone or model.backbone,
            num_clusters=args.num_clusters or model.num_clusters,
            num_pcs=num_pcs,
            patch_sizes=model.patch_sizes,
            strides=model.strides,
            image_size=(args.image_height if args.image_height is not None else model.image_height,
                        args.image_width if args.image_width is not None else model.image_width),
            vladv2=args.vladv2 or model.vladv2,
            device=args.device,
            seed=args.seed,
            max_descriptors=args.max_descriptors,
            max_pca_samples=args.max_pca_samples,
            progress=True,
        )
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote {out}")
    return 0
