"""Where a frame's depth image comes from (:class:`DepthSource`): given, computed on first use (a stereo
pair's SGBM runs only when the frame becomes a keyframe or its loop closure needs the query's depth),
or read from a folder of depth images named like the images (:class:`DepthFolder`: ``build-map --depth``,
``replay --depth``).

A depth image is registered to its image: integer pixels in ``verification.depth_scale`` metres
(16UC1 millimetres in ROS), float pixels in metres; zero, negative and non-finite are unknown.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from vlad_localization.verification.depth import depth_at, load_depth

log = logging.getLogger(__name__)


def fit_depth(depth: np.ndarray, image_hw) -> np.ndarray:
    """``depth`` for an image of ``image_hw`` (H, W): as is when the sizes agree, resized (nearest:
    no depth mixed across an edge) when it is the image scaled by one factor (within a pixel);
    else a ValueError (not registered to that image)."""
    height, width = depth.shape[:2]
    target_h, target_w = (int(v) for v in image_hw)
    if (height, width) == (target_h, target_w):
        return depth
    if depth.ndim != 2 or not height or abs(width * target_h / height - target_w) > 1.0:
        raise ValueError(f"the depth image is {width}x{height} but its image {target_w}x{target_h}: it must be "
                         "registered to the image, at its size or scaled by one factor")
    return cv2.resize(depth, (target_w, target_h), interpolation=cv2.INTER_NEAREST)


class DepthSource:
    """One frame's depth image, what ``LoopClosureDetector.process(depth=)`` takes: :meth:`given`
    (an array, or None), :meth:`computed` (a zero-argument callable returning one or None, run once,
    on first use) or ``DepthSource()`` (none)."""

    def __init__(self, image: np.ndarray | None = None, compute: Callable[[], np.ndarray | None] | None = None):
        self._image = image
        self._compute = compute
        self.known = image is not None or compute is not None  # False: the frame has no depth at all

    @classmethod
    def given(cls, image: np.ndarray | None) -> "DepthSource":
        return cls(image=image)

    @classmethod
    def computed(cls, compute: Callable[[], np.ndarray | None]) -> "DepthSource":
        return cls(compute=compute)

    def image(self) -> np.ndarray | None:
        """The depth image (computed now when it is the first call), or None."""
        if self._compute is not None:
            compute, self._compute = self._compute, None
            self._image = compute()
        return self._image

    def at(self, depth_scale: float, max_depth_m: float):
        """A depth function for verification (``verification.DepthFn``: raw pixels (M, 2) -> metres,
        NaN unknown), computing the image only when called; None when the frame has no depth at all."""
        if not self.known:
            return None

        def depth(points: np.ndarray) -> np.ndarray:
            image = self.image()
            if image is None:
                return np.full(len(np.asarray(points).reshape(-1, 2)), np.nan)
            return depth_at(image, points, depth_scale, max_depth_m)

        return depth


class DepthFolder:
    """Depth images registered to a folder's images, named like them (``<image stem>.png|.tif|.tiff|.exr``):
    ``folder(frame)`` is the frame's depth (fitted to its image) or None; ``missing`` counts the
    frames without one (the first is warned about)."""

    SUFFIXES = (".png", ".tif", ".tiff", ".exr")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"depth folder {self.folder} does not exist")
        self.missing = 0

    def __call__(self, frame) -> np.ndarray | None:
        stem = Path(str(frame.source)).stem
        for suffix in self.SUFFIXES:
            if (self.folder / (stem + suffix)).is_file():
                return fit_depth(load_depth(self.folder / (stem + suffix)), frame.rgb.shape[:2])
        if not self.missing:
            log.warning("no depth image %s.png (or .tif/.exr) in %s: that frame has no depth", stem, self.folder)
        self.missing += 1
        return None


__all__ = ["DepthFolder", "DepthSource", "fit_depth"]
