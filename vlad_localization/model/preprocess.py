"""Image preprocessing exactly as the reference's ``input_transform``: torchvision
``Resize((H, W))`` on a PIL image (PIL bilinear, which antialiases when downscaling), ``ToTensor``
([0, 1]) and ImageNet mean/std normalisation - implemented with Pillow and torch only."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 RGB -> height x width x 3 with PIL bilinear (0 = keep that size)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 RGB uint8 image, got {image.shape} {image.dtype}")
    if (height <= 0 or height == image.shape[0]) and (width <= 0 or width == image.shape[1]):
        return image
    size = (width if width > 0 else image.shape[1], height if height > 0 else image.shape[0])
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def to_network_input(images: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """A batch of RGB uint8 images -> N x 3 x H x W float32, ImageNet-normalised."""
    arrays = [resize_rgb(np.asarray(img), height, width) for img in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images of different sizes {sorted(shapes)} cannot share a batch: set model.image_height/"
            "image_width (non-zero) or encode them separately"
        )
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)
