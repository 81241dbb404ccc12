"""What geometric verification needs of a map keyframe (``views.sqlite``, map format version 3).

Per keyframe, optionally: the camera model (:class:`~vlad_localization.verification.PinholeCamera`
with its distortion, and the image size it applies to), the full-resolution image as JPEG
(quality 95: ~108 KB at 752x480, 3 ms to encode; SIFT features are computed from it when a closure is
verified, once per accepted candidate, instead of at every keyframe, and would take ~200 KB) and a
registered depth image as a 16-bit PNG in millimetres (0 = unknown; ~160 KB at 752x480 from stereo)
for metric PnP. A keyframe has a row when its camera model is known; its image and depth only
with ``map.store_views``.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from vlad_localization.verification.camera import PinholeCamera

from .errors import MapError, MapWriteError
from .metadata import connect, decode_thumbnail, encode_thumbnail

VIEWS_FILE = "views.sqlite"
JPEG_QUALITY = 95
DEPTH_UNIT_M = 0.001  # stored depth: uint16 millimetres (65.535 m at most), 0 = unknown

_SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
    id INTEGER PRIMARY KEY,
    height INTEGER NOT NULL, width INTEGER NOT NULL,
    fx REAL NOT NULL, fy REAL NOT NULL, cx REAL NOT NULL, cy REAL NOT NULL, distortion TEXT NOT NULL,
    image BLOB,
    depth BLOB
);
"""
_COLUMNS = "id, height, width, fx, fy, cx, cy, distortion, image, depth"


@dataclass(frozen=True)
class KeyframeView:
    """One keyframe's camera model for images of ``image_hw`` (H, W), and optionally its image
    (JPEG bytes) and registered depth (16-bit PNG bytes, millimetres)."""

    camera: PinholeCamera
    image_hw: tuple[int, int]
    image: bytes | None = None
    depth: bytes | None = None

    @classmethod
    def capture(cls, rgb: np.ndarray, camera: PinholeCamera, depth: np.ndarray | None = None,
                store_image: bool = True, depth_scale: float = DEPTH_UNIT_M) -> "KeyframeView":
        """The view of one frame: ``rgb`` (H, W, 3) and its ``camera``; ``depth`` registered to it
        (integer images in ``depth_scale`` metres per unit, float images in metres). Without
        ``store_image`` only the camera model is kept."""
        hw = tuple(int(v) for v in np.asarray(rgb).shape[:2])
        if not store_image:
            return cls(camera, hw)
        png = None
        if depth is not None:
            if tuple(depth.shape) != hw:
                raise ValueError(f"the depth image is {depth.shape[1]}x{depth.shape[0]} but its image "
                                 f"{hw[1]}x{hw[0]}: they must be registered pixel to pixel")
            png = encode_depth(depth, depth_scale)
        return cls(camera, hw, encode_thumbnail(rgb, hw[1], quality=JPEG_QUALITY), png)

    @property
    def nbytes(self) -> int:
        return len(self.image or b"") + len(self.depth or b"") + 120

    def depth_image(self) -> np.ndarray | None:
        """The stored depth as uint16 millimetres (H, W), or None."""
        if self.depth is None:
            return None
        image = cv2.imdecode(np.frombuffer(self.depth, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint16:
            raise MapError("a keyframe's stored depth is not a 16-bit PNG (damaged views.sqlite?)")
        return image

    def verification_view(self, max_depth_m: float):
        """The :class:`~vlad_localization.verification.View` of this keyframe (image decoded, depth
        as a depth function) for :func:`~vlad_localization.verification.verify_correspondences`."""
        from vlad_localization.verification import View, depth_at

        image = None if self.image is None else decode_thumbnail(self.image)
        depth = self.depth_image()
        source = None if depth is None else (lambda points: depth_at(depth, points, DEPTH_UNIT_M, max_depth_m))
        return View(self.camera, self.image_hw, image, source)

    def row(self, kf_id: int) -> tuple:
        c = self.camera
        return (int(kf_id), *self.image_hw, c.fx, c.fy, c.cx, c.cy, json.dumps(list(c.distortion)),
                self.image, self.depth)

    @classmethod
    def from_row(cls, r: tuple) -> "KeyframeView":
        camera = PinholeCamera(r[3], r[4], r[5], r[6], tuple(json.loads(r[7])))
        return cls(camera, (int(r[1]), int(r[2])), None if r[8] is None else bytes(r[8]),
                   None if r[9] is None else bytes(r[9]))


def encode_depth(depth: np.ndarray, depth_scale: float = DEPTH_UNIT_M) -> bytes:
    """A depth image (integer: ``depth_scale`` m per unit; float: metres) as a 16-bit PNG in
    millimetres; NaN, non-positive and beyond 65.535 m values become 0 (unknown)."""
    metres = np.asarray(depth, np.float64) * (1.0 if np.issubdtype(depth.dtype, np.floating) else depth_scale)
    mm = np.rint(metres / DEPTH_UNIT_M)
    mm[~((mm > 0) & (mm <= np.iinfo(np.uint16).max))] = 0
    ok, buf = cv2.imencode(".png", mm.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise ValueError("depth PNG encoding failed")
    return buf.tobytes()


class ViewCapture:
    """What ``build_map`` stores per keyframe: the camera model (the frame's own, from the bag's
    CameraInfo, else ``camera``, e.g. ``--intrinsics``; none known: no view) and, with ``store_images``,
    the image and its depth: the frame's own (``frame.depth``, from a bag's depth topic), else the
    depth image named like it in ``depth_dir`` (:class:`~vlad_localization.verification.depth_sources.DepthFolder`).
    ``counts``: ``views``, ``depth``, ``no_camera``, ``no_depth`` keyframes."""

    def __init__(self, camera: PinholeCamera | None = None, store_images: bool = True,
                 depth_dir: str | Path | None = None, depth_scale: float = DEPTH_UNIT_M):
        from vlad_localization.verification.depth_sources import DepthFolder

        self.camera, self.store_images, self.depth_scale = camera, bool(store_images), float(depth_scale)
        self.depth = None if depth_dir is None else DepthFolder(depth_dir)
        self.counts: Counter[str] = Counter()

    @classmethod
    def from_config(cls, config, depth_dir: str | Path | None = None) -> "ViewCapture":
        """From ``verification.intrinsics`` (None: the frames' own cameras only), ``map.store_views``
        and ``verification.depth_scale``."""
        intrinsics = config.verification.intrinsics
        camera = None if intrinsics is None else PinholeCamera.from_list(intrinsics)
        return cls(camera, config.map.store_views, depth_dir, config.verification.depth_scale)

    def __call__(self, frame) -> KeyframeView | None:
        camera = getattr(frame, "camera", None)
        camera = self.camera if camera is None else camera
        if camera is None:
            self.counts["no_camera"] += 1
            return None
        depth = getattr(frame, "depth", None) if self.store_images else None
        reads_depth = self.store_images and self.depth is not None and depth is None
        depth = self.depth(frame) if reads_depth else depth
        self.counts["views"] += 1
        self.counts["depth"] += depth is not None
        self.counts["no_depth"] += reads_depth and depth is None
        return KeyframeView.capture(frame.rgb, camera, depth, self.store_images, self.depth_scale)


class ViewTable:
    """``views.sqlite``: ``add`` views by keyframe id, ``get`` one (None when the keyframe has none)."""

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        self.db = connect(self.path, _SCHEMA if create else None, "views", "keyframe views database")

    def add(self, views: Iterable[tuple[int, KeyframeView]]) -> None:
        try:
            with self.db:
                self.db.executemany(f"INSERT INTO views ({_COLUMNS}) VALUES ({','.join('?' * 10)})",
                                    [v.row(i) for i, v in views])
        except sqlite3.OperationalError as exc:  # e.g. "database or disk is full", "disk I/O error"
            raise MapWriteError(f"{self.path.name}: {exc}") from exc

    def get(self, kf_id: int) -> KeyframeView | None:
        try:
            row = self.db.execute(f"SELECT {_COLUMNS} FROM views WHERE id = ?", (int(kf_id),)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise MapError(f"{self.path}: keyframe views database is corrupt ({exc})") from exc
        return None if row is None else KeyframeView.from_row(row)

    def counts(self) -> dict[str, int]:
        """The manifest's ``views``: keyframes with a camera model, an image, a depth image."""
        n, images, depth = self.db.execute("SELECT COUNT(*), COUNT(image), COUNT(depth) FROM views").fetchone()
        return {"cameras": int(n), "images": int(images), "depth": int(depth)}

    def stats(self) -> dict[str, int]:
        row = self.db.execute("SELECT COALESCE(SUM(LENGTH(image)), 0), COALESCE(SUM(LENGTH(depth)), 0) "
                              "FROM views").fetchone()
        return {**self.counts(), "image_bytes": int(row[0]), "depth_bytes": int(row[1])}

    def close(self) -> None:
        self.db.close()

    def __del__(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()


__all__ = ["DEPTH_UNIT_M", "KeyframeView", "VIEWS_FILE", "ViewCapture", "ViewTable", "encode_depth"]
