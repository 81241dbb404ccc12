"""Reading image files as RGB uint8 arrays (the library's one image layout: H x W x 3, RGB)."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file (any OpenCV-readable format, grey or colour) as H x W x 3 RGB uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"image {path} could not be decoded (corrupt or unsupported format)")
    return to_rgb8(img, bgr=True)


def to_rgb8(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Grey / BGR(A) / RGB(A), 8 or 16 bit -> H x W x 3 RGB uint8 (a new array).

    16-bit values are scaled by 1/256 with OpenCV ``convertTo`` rounding (half to even, saturating),
    as ``cv_bridge`` does for ``mono16`` -> ``rgb8``; alpha is dropped.
    """
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=1.0 / 256.0).reshape(img.shape)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected a grey, 3- or 4-channel image, got shape {img.shape}")
    img = img[:, :, 2::-1] if bgr else img[:, :, :3]
    return np.array(img, dtype=np.uint8, order="C", copy=True)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` in natural order (``img_2`` before ``img_10``; ties such as
    ``img_01`` / ``img_1`` by name). Hidden files (``.x.png``, macOS ``._x.png``) and folders are not images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    images = (p for p in folder.iterdir()
              if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    return sorted(images, key=lambda p: (natural_key(p), p.name))


def natural_key(path: Path) -> list:
    """Sort key that orders embedded numbers numerically."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]
