"""Writing a map atomically: :class:`MapWriter` (new map, or copy-on-write append to one)."""
from __future__ import annotations

import errno
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import atomic
from .database import INDEX_FILE, MapDatabase
from .errors import MapError, MapWriteError
from .index import GlobalIndex
from .integrity import record_files
from .manifest import Manifest, Run, now_iso
from .metadata import DB_FILE, Keyframe, KeyframeTable
from .patch_store import GLOBAL_FILE, PATCH_DTYPE, RowWriter, open_rows, patch_file
from .views import VIEWS_FILE, KeyframeView, ViewTable

DEFAULT_INDEX = {"spec": "Flat", "nprobe": 16, "ef_search": 128}  # a new map's, when not given
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}  # reported as a MapError

log = logging.getLogger(__name__)


class MapWriter:
    """Stages a map next to ``target``: ``add`` keyframes, then ``commit`` (or ``abort``).

    Use as a context manager: leaving it without ``commit`` (an exception, KeyboardInterrupt)
    discards the staging directory and leaves whatever was at ``target`` untouched.
    """

    def __init__(self, target: str | Path, identity: dict[str, Any] | None, index: str | None = None,
                 nprobe: int | None = None, ef_search: int | None = None, thumbnails: bool = True,
                 append: bool = False):
        self.target = Path(target).absolute()
        self._lock = atomic.WriteLock(self.target)  # another writer of this map finishes first
        try:
            self.staging = atomic.staging_dir(self.target)
        except BaseException:
            self._lock.release()
            raise
        self.manifest: Manifest | None = None
        self._first_id = 0  # first id of this writer's keyframes (after the old ones on append)
        self._run_start = 0  # first id of the current run
        self._writers: dict[str, RowWriter] = {}
        self._table: KeyframeTable | None = None
        self._views: ViewTable | None = None  # views.sqlite, opened with the first keyframe view
        self._params = dict(spec=index, nprobe=nprobe, ef_search=ef_search)  # None: the map's own, else the default
        self._thumbnails = thumbnails
        self._identity = identity
        try:
            if append:
                self._start_append()
        except BaseException:
            self.abort()
            raise

    @classmethod
    def from_config(cls, target, identity, map_cfg, append: bool = False) -> "MapWriter":
        return cls(target, identity, map_cfg.index, map_cfg.nprobe, map_cfg.ef_search,
                   map_cfg.store_thumbnails, append)

    # ------------------------------------------------------------------ setup
    def _start_append(self) -> None:
        existing = MapDatabase.open(self.target, self._identity)  # validates the old map fully
        existing.close()
        for item in self.target.iterdir():  # copy-on-write: the old map is never modified
            if item.is_file() and item.name != INDEX_FILE:
                shutil.copy2(item, self.staging / item.name)
        self.manifest = existing.manifest
        for key, value in self._params.items():  # unless given, an append keeps the index settings
            if value is None:
                self._params[key] = self.manifest.index.get(key)
        self._first_id = self._run_start = self.manifest.keyframes
        self._open_writers()

    def _init_layout(self, dim: int, grid, image_size, num_patches: dict[int, int]) -> None:
        self.manifest = Manifest(
            model=dict(self._identity), dim=dim, grid=tuple(grid), image_size=tuple(image_size),
            num_patches=dict(num_patches), index={}, thumbnails=self._thumbnails,
        )
        self._open_writers()

    def _open_writers(self) -> None:
        m = self.manifest
        self._writers[GLOBAL_FILE] = RowWriter(self.staging / GLOBAL_FILE, np.float32, (m.dim,))
        for p, n in m.num_patches.items():
            self._writers[patch_file(p)] = RowWriter(self.staging / patch_file(p), PATCH_DTYPE, (n, m.dim))
        self._table = KeyframeTable(self.staging / DB_FILE, create=True)
        if (self.staging / VIEWS_FILE).is_file():  # appending to a map with views
            self._views = ViewTable(self.staging / VIEWS_FILE, create=True)

    # ------------------------------------------------------------------ writing
    @property
    def count(self) -> int:
        """Keyframes in the map so far (previous ones included when appending)."""
        return 0 if self.manifest is None else self.manifest.keyframes

    @property
    def added(self) -> int:
        return self.count - self._first_id

    def add(self, global_desc: np.ndarray, patches: dict[int, np.ndarray], keyframes: Sequence[Keyframe],
            grid=None, image_size=None, thumbnails: Sequence[bytes | None] | None = None,
            views: Sequence[KeyframeView | None] | None = None) -> list[int]:
        """Append N keyframes: global (N, D), {P: (N, patches, D)} and their metadata (ids assigned
        here, returned), optionally their thumbnails and verification ``views`` (None: none for that
        keyframe). ``grid``/``image_size`` are needed for the first add of a new map."""
        global_desc = np.asarray(global_desc, np.float32)
        n = len(global_desc)
        if not (len(keyframes) == n and all(len(a) == n for a in patches.values())):
            raise ValueError("global descriptors, patches and keyframes must have the same length")
        bad = [name for name, a in [("global", global_desc)] + [(f"patch size {p}", a) for p, a in patches.items()]
               if not np.isfinite(a).all()]
        if bad:  # a NaN keyframe would be every query's nearest neighbour
            raise MapError(f"refusing keyframes with NaN/inf descriptors ({', '.join(bad)}): check the encoder "
                           "(fp16 overflow? corrupt checkpoint?)")
        if self.manifest is None:
            self._init_layout(global_desc.shape[1], grid, image_size, {p: a.shape[1] for p, a in patches.items()})
        if set(patches) != set(self.manifest.num_patches):
            raise MapError(f"patch sizes {sorted(patches)} differ from the map's {sorted(self.manifest.num_patches)}")
        ids = list(range(self.count, self.count + n))
        run = len(self.manifest.runs)
        self._writers[GLOBAL_FILE].append(global_desc)
        for p, a in patches.items():
            self._writers[patch_file(p)].append(a)
        thumbs = {i: t for i, t in zip(ids, thumbnails or []) if t is not None and self._thumbnails}
        self._table.add([replace(k, id=i, run=run) for i, k in zip(ids, keyframes)], thumbs)
        stored = [(i, v) for i, v in zip(ids, views or []) if v is not None]
        if stored:
            if self._views is None:
                self._views = ViewTable(self.staging / VIEWS_FILE, create=True)
            self._views.add(stored)
        self.manifest.keyframes += n
        return ids

    def end_run(self, sources: Sequence[str] = (), skipped: dict[str, int] | None = None,
                created: str | None = None) -> None:
        """Close the current mapping run (keyframes added since the last ``end_run``)."""
        if self.manifest is None or self.count == self._run_start:
            return
        run = Run(first_id=self._run_start, keyframes=self.count - self._run_start,
                  sources=list(sources), skipped=dict(skipped or {}))
        if created:
            run.created = created
        self.manifest.runs.append(run)
        self._run_start = self.count

    def commit(self, sources: Sequence[str] = (), skipped: dict[str, int] | None = None,
               allow_empty: bool = False) -> Manifest:
        """Close the run, build the index, write the manifest and atomically publish at ``target``.
        ``allow_empty``: publish even if nothing was added (re-indexing an existing map)."""
        try:
            if self.manifest is None or (self.added == 0 and not allow_empty):
                raise MapError(f"no keyframes to write to {self.target}: nothing was selected "
                               "(check the input, the image topic and the keyframe thresholds)")
            self.end_run(sources, skipped)
            m = self.manifest
            for w in self._writers.values():
                w.close()
            self._table.close()
            m.views = {}
            if self._views is not None:
                m.views = self._views.counts()
                self._views.close()
            vectors = open_rows(self.staging / GLOBAL_FILE, np.float32, (m.dim,), m.keyframes)
            params = {k: DEFAULT_INDEX[k] if v is None else v for k, v in self._params.items()}
            index = GlobalIndex.build(params["spec"], vectors)
            index.save(self.staging / INDEX_FILE)
            del vectors
            m.index = {"spec": params["spec"], "effective": index.spec, "metric": "inner_product",
                       "id_map": "IndexIDMap2", "nprobe": params["nprobe"], "ef_search": params["ef_search"]}
            m.updated = now_iso()
            m.files = record_files(self.staging)  # every file's size and sha256, in the manifest written last
            m.write(self.staging)
            MapDatabase.open(self.staging).close()  # never publish a map we cannot read back
            atomic.publish(self.staging, self.target)
            self._lock.release()
            return m
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the staging directory (the target is untouched), also when the disk is full
        or failing (nothing here is written or synced)."""
        try:
            for w in self._writers.values():
                w.abandon()
            for table in (self._table, self._views):
                if table is not None:
                    table.close()
            atomic.discard(self.staging)
        finally:
            self._lock.release()

    def __enter__(self) -> "MapWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lock.held:  # an exception, or leaving without commit: nothing is published
            self.abort()
        if isinstance(exc, MapWriteError) or (isinstance(exc, OSError) and exc.errno in DISK_ERRORS):
            raise MapError(f"writing map {self.target} failed ({exc}); nothing was changed there "
                           "(a previous map is intact): free space or fix the disk, then run it again") from exc


def reindex_map(path: str | Path, index: str, nprobe: int | None = None, ef_search: int | None = None) -> Manifest:
    """Rebuild a map's global index as ``index`` (no re-encoding), atomically."""
    with MapWriter(path, identity=None, index=index, nprobe=nprobe, ef_search=ef_search, append=True) as w:
        return w.commit(allow_empty=True)
