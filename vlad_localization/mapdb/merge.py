"""Merging maps built with the same model into one (runs kept, ids renumbered)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .database import MapDatabase
from .errors import MapError
from .manifest import Manifest, describe, mismatches
from .writer import MapWriter

CHUNK = 1024


def merge_maps(out: str | Path, maps: Sequence[str | Path], index: str | None = None,
               nprobe: int | None = None, ef_search: int | None = None) -> Manifest:
    """Write the keyframes of ``maps`` (in order) as one map at ``out``, atomically.

    Keyframe ids are renumbered consecutively; every source run stays a run. All maps must share
    the model identity and layout (else :class:`MapError` naming both). ``index`` and its params
    default to the first map's.
    """
    if len(maps) < 2:
        raise MapError("merge needs at least two maps")
    dbs = [MapDatabase.open(p) for p in maps]
    try:
        first = dbs[0].manifest
        for db in dbs[1:]:
            diffs = mismatches(first.model, db.manifest.model)
            if diffs or (db.manifest.dim, db.manifest.num_patches) != (first.dim, first.num_patches):
                raise MapError(
                    f"cannot merge {db.path} (model {describe(db.manifest.model)}) into maps built with "
                    f"{dbs[0].path} (model {describe(first.model)}): maps must be built with the same model"
                )
        params = first.index
        writer = MapWriter(out, first.model, index or params.get("spec", "Flat"),
                           nprobe or params.get("nprobe", 16), ef_search or params.get("ef_search", 128),
                           thumbnails=any(db.manifest.thumbnails for db in dbs))
        with writer:
            for db in dbs:
                for run in db.manifest.runs:
                    for lo in range(run.first_id, run.first_id + run.keyframes, CHUNK):
                        ids = np.arange(lo, min(lo + CHUNK, run.first_id + run.keyframes))
                        _copy(db, ids, writer)
                    writer.end_run([f"{db.path}: {s}" for s in run.sources] or [str(db.path)],
                                   run.skipped, run.created)
            return writer.commit()
    finally:
        for db in dbs:
            db.close()


def _copy(db: MapDatabase, ids: np.ndarray, writer: MapWriter) -> None:
    m = db.manifest
    thumbs = [db.table.thumbnail_bytes(int(i)) for i in ids]
    views = [db.view(int(i)) for i in ids]
    writer.add(np.asarray(db.global_desc[ids]), db.patches(ids), db.keyframes(ids),
               grid=m.grid, image_size=m.image_size, thumbnails=thumbs, views=views)
