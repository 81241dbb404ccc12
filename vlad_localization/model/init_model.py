"""Off-the-shelf Patch-NetVLAD checkpoints from ImageNet backbone weights (no training).

As the NetVLAD / Patch-NetVLAD initialisation (``get_clusters`` + ``init_params``) followed by
NetVLAD's ``addPCA``: sample L2-normalised conv descriptors from the images, k-means them (faiss),
initialise the soft-assignment from the centroids, then fit a PCA-whitening (WPCA) on the patch and
global VLAD vectors of the same images. Written in the official checkpoint format.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..images.io import load_rgb
from .backbones import build_backbone
from .checkpoint import load_module_state, read_checkpoint, save_checkpoint
from .device import resolve_device
from .netvlad import PatchNetVLADPooling
from .preprocess import to_network_input

log = logging.getLogger(__name__)

FEATURE_CACHE_BYTES = 1 << 30  # keep conv features of up to 1 GiB between the two passes


def fit_wpca(samples: np.ndarray, num_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whitening as NetVLAD's ``addPCA``: rows of ``samples`` (n x d) -> conv weight
    (num_pcs, d, 1, 1) and bias (num_pcs,) with ``W = diag(1/sqrt(lambda + 1e-9)) U^T``, ``b = -W mu``.
    Uses the dual (Gram) problem when n < d."""
    n, d = samples.shape
    if num_pcs > min(n - 1, d):
        raise ValueError(f"num_pcs {num_pcs} needs more than {num_pcs} samples of dim > {num_pcs}, got {n} x {d}")
    x = torch.tensor(samples, dtype=torch.float32)  # a copy: centred in place below
    mu = x.mean(0)
    x -= mu
    dual = d > n
    lams, vecs = _top_eigenpairs((x @ x.t() if dual else x.t() @ x).double() / (n - 1), num_pcs)
    if dual:
        # U = X^T V / sqrt(lambda (n-1)), in float64 one column block of X at a time (X is n x d, large)
        u = torch.cat([x[:, lo : lo + 4096].double().t() @ vecs for lo in range(0, d, 4096)])
        u /= torch.sqrt(lams.clamp_min(1e-9) * (n - 1))
    else:
        u = vecs
    weight = (u / torch.sqrt(lams.clamp_min(0) + 1e-9)).t()  # (num_pcs, d)
    bias = -(weight @ mu.double())
    return weight.float().numpy().reshape(num_pcs, d, 1, 1), bias.float().numpy()


def _top_eigenpairs(sym: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenvalues (descending) and eigenvectors of a symmetric matrix."""
    lams, vecs = torch.linalg.eigh(sym)
    return lams.flip(0)[:k], vecs.flip(1)[:, :k]


def _load_backbone(weights: str | Path, backbone: str) -> torch.nn.Module:
    contents = read_checkpoint(weights)
    if contents.backbone != backbone:
        raise ValueError(f"{weights} holds {contents.backbone} weights, not {backbone} (use --backbone {contents.backbone})")
    model = build_backbone(backbone)
    load_module_state(model, contents.backbone_state, contents.path, "backbone")
    return model.eval()


def build_offtheshelf_checkpoint(
    backbone_weights: str | Path,
    image_paths: Sequence[str | Path],
    out: str | Path,
    *,
    backbone: str = "vgg16",
    num_clusters: int = 64,
    num_pcs: int | None = 512,
    patch_sizes: Sequence[int] = (5,),
    strides: Sequence[int] = (1,),
    image_size: tuple[int, int] = (480, 640),
    vladv2: bool = False,
    device: str = "cpu",
    seed: int = 0,
    max_descriptors: int = 50_000,
    max_pca_samples: int = 10_000,
    kmeans_iterations: int = 100,
    progress: bool = True,
) -> Path:
    """Write an off-the-shelf checkpoint (official format) and return its path.

    ``num_pcs`` larger than the available VLAD samples allow (samples - 1) is capped with a
    warning; ``None`` writes no WPCA layer.
    """
    image_paths = [Path(p) for p in image_paths]
    if not image_paths:
        raise ValueError("init-model needs at least one image")
    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = _load_backbone(backbone_weights, backbone).to(dev)
    pooling = PatchNetVLADPooling(num_clusters, model.out_channels, True, vladv2, patch_sizes, strides)

    per_image = max(1, math.ceil(max_descriptors / len(image_paths)))
    descs, cached, cache_bytes = [], [], 0
    with torch.inference_mode():
        for path in tqdm(image_paths, desc="conv descriptors", disable=not progress):
            feats = model(to_network_input([load_rgb(path)], *image_size).to(dev)).float()
            cells = F.normalize(feats, p=2, dim=1)[0].flatten(1).t().cpu()  # (HW, C)
            pick = rng.choice(cells.shape[0], min(per_image, cells.shape[0]), replace=False)
            descs.append(cells[np.sort(pick)].numpy())
            cache_bytes += feats.numel() * 4
            cached.append(feats.cpu() if cache_bytes <= FEATURE_CACHE_BYTES else None)
    descs = np.ascontiguousarray(np.concatenate(descs)[:max_descriptors], dtype=np.float32)
    if descs.shape[0] < num_clusters:
        raise ValueError(
            f"only {descs.shape[0]} conv descriptors for {num_clusters} clusters: add images or lower --num-clusters"
        )
    log.info("k-means: %d descriptors -> %d clusters", descs.shape[0], num_clusters)
    kmeans = faiss.Kmeans(descs.shape[1], num_clusters, niter=kmeans_iterations, verbose=False, seed=seed)
    kmeans.train(descs)
    pooling.init_params(kmeans.centroids, descs)
    pooling = pooling.to(dev).eval()

    wpca_state = None
    if num_pcs is not None:
        def features():
            for path, feats in zip(image_paths, cached):
                yield path, (feats if feats is not None else model(to_network_input([load_rgb(path)], *image_size).to(dev)).float())

        samples = vlad_samples(pooling, features(), len(image_paths), dev, max_pca_samples, rng, progress)
        wpca_state, num_pcs = wpca_from_samples(samples, num_pcs, len(image_paths))

    metadata = {
        "kind": "off-the-shelf",
        "backbone": backbone,
        "num_clusters": int(num_clusters),
        "num_pcs": None if num_pcs is None else int(num_pcs),
        "vladv2": bool(vladv2),
        "alpha": float(pooling.alpha),
        "patch_sizes": [int(p) for p in patch_sizes],
        "strides": [int(s) for s in strides],
        "image_height": int(image_size[0]),
        "image_width": int(image_size[1]),
        "num_images": len(image_paths),
        "seed": int(seed),
    }
    return save_checkpoint(out, model, pooling, wpca_state, metadata)


def wpca_from_samples(samples: np.ndarray, num_pcs: int, num_images: int) -> tuple[dict[str, torch.Tensor], int]:
    """The official ``WPCA.0.*`` state fitted on VLAD ``samples`` (:func:`fit_wpca`) and its
    dimension: ``num_pcs`` capped (with a warning) to what the samples allow."""
    cap = min(samples.shape[0] - 1, samples.shape[1] - 1)
    if cap < 1:
        raise ValueError(f"only {samples.shape[0]} VLAD sample(s) from {num_images} image(s): a WPCA "
                         "needs at least 2; use more images or patch sizes, or --num-pcs 0 for no WPCA")
    if num_pcs > cap:
        warnings.warn(
            f"num_pcs {num_pcs} capped to {cap}: only {samples.shape[0]} VLAD samples from "
            f"{num_images} images (use more images for {num_pcs} PCs)",
            stacklevel=3,
        )
        num_pcs = cap
    log.info("WPCA: %d samples of dim %d -> %d PCs", samples.shape[0], samples.shape[1], num_pcs)
    weight, bias = fit_wpca(samples, num_pcs)
    return {"WPCA.0.weight": torch.from_numpy(weight), "WPCA.0.bias": torch.from_numpy(bias)}, num_pcs


def vlad_samples(pooling, features, count: int, dev, max_samples: int, rng, progress: bool) -> np.ndarray:
    """Raw (L2-normalised, un-projected) patch and global VLAD vectors of every image, subsampled to
    ``max_samples`` rows; ``features`` yields (name, conv features (1, C, H, W)) of ``count`` images.
    Every image yields the same number of rows (one input size), so the sample is drawn up front
    and only the chosen rows of each image are kept: memory is bounded by ``max_samples`` rows, not
    by all patches of all images (12 GB for 100 images of the speed preset)."""
    keep = None  # sorted global row indices to keep, known after the first image
    rows: list[np.ndarray] = []
    with torch.inference_mode():
        for i, (path, feats) in enumerate(tqdm(features, total=count, desc="VLAD for WPCA", disable=not progress)):
            global_desc, patches = pooling(feats.to(dev).float())
            image_rows = torch.cat([global_desc] + [p[0] for p in patches.values()]).cpu().numpy()
            if keep is not None and image_rows.shape[0] != per_image:
                raise ValueError(f"{path} gives {image_rows.shape[0]} patch rows, the first image {per_image}: "
                                 "images of different sizes need a fixed --image-height/--image-width")
            per_image = image_rows.shape[0]
            if keep is None:
                total = per_image * count
                keep = np.arange(total) if total <= max_samples else np.sort(rng.choice(total, max_samples, replace=False))
            lo, hi = np.searchsorted(keep, [i * per_image, (i + 1) * per_image])
            rows.append(image_rows[keep[lo:hi] - i * per_image])
    return np.concatenate(rows)
