"""Raw row files: the global descriptors (float32) and one float16 patch array per patch size.

Each file is a headerless C-order array ``(keyframes, *row_shape)``; its shape comes from the
manifest, so a size mismatch means truncation. Readers memory-map it, so a query reads only the
rows of its candidates.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import MapError

GLOBAL_FILE = "global.f32"
PATCH_DTYPE = np.float16


def patch_file(patch_size: int) -> str:
    return f"patches_p{int(patch_size)}.f16"


class RowWriter:
    """Appends fixed-shape rows to a raw array file (``append``, then ``close`` syncs it)."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self._f = open(self.path, "ab")

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[1:] != self.row_shape:
            raise MapError(
                f"{self.path.name}: rows of shape {rows.shape[1:]} do not fit the map's {self.row_shape} "
                "(all keyframes must be encoded at the same network input size)"
            )
        self._f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def abandon(self) -> None:
        """Close without syncing, ignoring write errors (the file is being discarded: disk full)."""
        try:
            self._f.close()
        except OSError:
            pass


def open_rows(path: Path, dtype: np.dtype, row_shape: tuple[int, ...], count: int) -> np.ndarray:
    """Memory-map ``count`` rows of ``row_shape``; a wrong file size is a :class:`MapError`."""
    path = Path(path)
    dtype = np.dtype(dtype)
    if not path.is_file():
        raise MapError(f"{path}: file missing from the map")
    expected = count * int(np.prod(row_shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise MapError(
            f"{path}: {actual} bytes but the manifest's {count} keyframes x {tuple(row_shape)} "
            f"{dtype.name} need {expected} (truncated or from another map); rebuild the map"
        )
    if count == 0:
        return np.zeros((0, *row_shape), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count, *row_shape))


class PatchStore:
    """Read-only patch descriptors: ``get(ids) -> {P: (K, patches, D) float16}``."""

    def __init__(self, directory: Path, num_patches: dict[int, int], dim: int, count: int):
        self.arrays = {
            p: open_rows(Path(directory) / patch_file(p), PATCH_DTYPE, (n, dim), count)
            for p, n in num_patches.items()
        }

    def get(self, ids) -> dict[int, np.ndarray]:
        """Patch rows of the given keyframe ids (only those rows are read from disk)."""
        idx = np.asarray(ids, dtype=np.int64)
        return {p: np.asarray(a[idx]) for p, a in self.arrays.items()}

    def bytes_per_keyframe(self) -> int:
        return sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in self.arrays.values())
