"""Opening and reading a map: :class:`MapDatabase`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MapError
from .index import GlobalIndex
from .integrity import MapIntegrityError, check_sizes, verify_files
from .manifest import MANIFEST, Manifest
from .metadata import DB_FILE, Keyframe, KeyframeTable, decode_thumbnail
from .patch_store import GLOBAL_FILE, PatchStore, open_rows
from .views import VIEWS_FILE, KeyframeView, ViewTable

log = logging.getLogger(__name__)

INDEX_FILE = "global.faiss"


class MapDatabase:
    """A read-only map: ``search`` global descriptors, fetch ``keyframes``/``patches``/``thumbnail``/``view``.

    Open with :meth:`open`; every file is checked against the manifest first (sizes, structure),
    so a damaged map raises :class:`MapError` naming the file instead of failing later;
    :meth:`verify` also reads every byte against the manifest's sha256.
    """

    def __init__(self, path: Path, manifest: Manifest, index: GlobalIndex, table: KeyframeTable,
                 patches: PatchStore, global_desc: np.ndarray, views: ViewTable | None = None):
        self.path = Path(path)
        self.views = views  # views.sqlite (format version 3), None when the map stores no views
        self.manifest = manifest
        self.index = index
        self.table = table
        self.store = patches
        self.global_desc = global_desc
        self.verified: dict[str, int] = {}  # {file: bytes} checked against its sha256 when opened with verify

    @classmethod
    def open(cls, path: str | Path, identity: dict[str, Any] | None = None, map_cfg=None,
             verify: bool | None = None) -> "MapDatabase":
        """Open and validate a map. ``identity`` (``Encoder.identity()``) must match the map's
        model; ``map_cfg`` (:class:`MapConfig`) sets nprobe / efSearch / GPU search (its None
        values keep the map's own). ``verify`` (default: ``map_cfg.verify_on_open``, else False):
        first read every byte against the manifest's sha256 (:func:`verify_map`); ``verified``
        then holds {file: bytes} checked."""
        path = Path(path)
        if not path.is_dir():
            raise MapError(f"map {path} does not exist (or is not a directory); build it with build-map")
        if verify is None:
            verify = bool(getattr(map_cfg, "verify_on_open", False))
        verified = _verify_bytes(path) if verify else {}
        for attempt in range(3):  # a writer may swap a new map in while the files are being opened
            directory = path.stat().st_ino
            try:
                db = cls._open(path, identity, map_cfg)
            except MapError:
                if attempt == 2 or not path.is_dir() or path.stat().st_ino == directory:
                    raise
                continue
            if path.stat().st_ino == directory:  # every file came from one version of the map
                db.verified = verified
                return db
            db.close()
        raise MapError(f"map {path} kept changing while it was being opened (a writer publishing); try again")

    @classmethod
    def _open(cls, path: Path, identity: dict[str, Any] | None, map_cfg) -> "MapDatabase":
        manifest = Manifest.read(path)
        check_sizes(path, manifest)
        if identity is not None:
            manifest.check_model(identity, path)
        n, dim = manifest.keyframes, manifest.dim
        global_desc = open_rows(path / GLOBAL_FILE, np.float32, (dim,), n)
        store = PatchStore(path, manifest.num_patches, dim, n)
        table = KeyframeTable(path / DB_FILE)
        table.check(n)
        index = GlobalIndex.load(path / INDEX_FILE, manifest.index.get("effective", "Flat"))
        if index.ntotal != n or index.dim != dim:
            raise MapError(f"{path / INDEX_FILE}: index holds {index.ntotal} x {index.dim}-d vectors, "
                           f"the manifest says {n} x {dim}-d; rebuild the map")
        if manifest.views and not (path / VIEWS_FILE).is_file():
            raise MapError(f"{path / VIEWS_FILE}: file missing from the map (the manifest counts {manifest.views})")
        views = ViewTable(path / VIEWS_FILE) if manifest.views else None
        db = cls(path, manifest, index, table, store, global_desc, views)
        index.set_params(manifest.index.get("nprobe"), manifest.index.get("ef_search"))
        if map_cfg is not None:
            db.configure(map_cfg)
        return db

    @property
    def label(self) -> str:
        """The map's name in messages: its directory."""
        return str(self.path)

    def verify(self) -> dict[str, int]:
        """Read every byte of the map's files against the manifest's sha256: {file: bytes} checked
        ({} for a version 1 map, which records no checksums), else
        :class:`~vlad_localization.mapdb.integrity.MapIntegrityError` naming each damaged file."""
        return verify_files(self.path, self.manifest)

    def configure(self, map_cfg) -> None:
        """Apply search parameters (nprobe, ef_search, use_gpu) from a MapConfig."""
        self.index.set_params(map_cfg.nprobe, map_cfg.ef_search)
        if map_cfg.use_gpu:
            self.index.to_gpu()

    # ------------------------------------------------------------------ reading
    @property
    def size(self) -> int:
        return self.manifest.keyframes

    def __len__(self) -> int:
        return self.size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` keyframes by inner product: (similarities (Q, k), ids (Q, k), -1 = none)."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        if self.size == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self.index.search(q, k, exact=self.global_desc)  # PQ: shortlist re-scored exactly

    def keyframes(self, ids) -> list[Keyframe]:
        return self.table.get(ids)

    def keyframe(self, map_id: int) -> Keyframe:
        return self.table.get([map_id])[0]

    def descriptors(self, ids) -> np.ndarray:
        """(len(ids), D) float32 global descriptors of ``ids`` (exact, whatever the index type)."""
        return np.asarray(self.global_desc[np.asarray(ids, np.int64).reshape(-1)], np.float32)

    def similarities(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, similarities) of one query (D,) with every keyframe (exact)."""
        return np.arange(self.size, dtype=np.int64), np.asarray(self.global_desc @ np.asarray(query, np.float32))

    def all_keyframes(self) -> list[Keyframe]:
        """Every keyframe's metadata, by id."""
        return list(self.table.iter_all())

    def patches(self, ids) -> dict[int, np.ndarray]:
        """{patch size: (len(ids), patches, D) float16}; reads only those rows."""
        return self.store.get(ids)

    def thumbnail(self, map_id: int) -> np.ndarray | None:
        """The keyframe's thumbnail as RGB uint8, or None when the map has none."""
        data = self.table.thumbnail_bytes(map_id)
        return None if data is None else decode_thumbnail(data)

    def view(self, map_id: int) -> KeyframeView | None:
        """What verification needs of the keyframe (camera model, image, depth), or None when the
        map stores none for it (format version 1 or 2, no camera model known when it was built)."""
        if not 0 <= int(map_id) < self.size:
            raise KeyError(f"keyframe id {map_id} not in map {self.path}")
        return None if self.views is None else self.views.get(map_id)

    def stats(self) -> dict[str, Any]:
        files = {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}
        patch_bytes = self.store.bytes_per_keyframe()
        return {
            **self.table.stats(),
            "views": self.views.stats() if self.views is not None else {},
            "files": files,
            "total_bytes": sum(files.values()),
            "patch_bytes_per_keyframe": patch_bytes,
            "reference_npy_bytes_per_keyframe": reference_npy_bytes(self.manifest),
            "patch_size_ratio_vs_reference": (patch_bytes / reference_npy_bytes(self.manifest))
            if self.manifest.num_patches else None,
        }

    def close(self) -> None:
        self.table.close()
        if self.views is not None:
            self.views.close()
        self.store.arrays.clear()
        self.global_desc = None

    def __enter__(self) -> "MapDatabase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MapDatabase({str(self.path)!r}, keyframes={self.size}, index={self.index.spec})"


def reference_npy_bytes(manifest: Manifest) -> int:
    """Bytes per keyframe of the reference feature_extract.py patch files (float32 .npy, 128 B header each)."""
    return sum(n * manifest.dim * 4 + 128 for n in manifest.num_patches.values())


__all__ = ["MapDatabase", "MapError", "INDEX_FILE", "MANIFEST", "verify_map"]


def _verify_bytes(path: Path) -> dict[str, int]:
    try:
        manifest = Manifest.read(path)
    except MapError as exc:  # unreadable JSON, a damaged key or value: the manifest is the damaged file
        raise MapIntegrityError(path, {MANIFEST: str(exc)}) from exc
    return verify_files(path, manifest)


def verify_map(path: str | Path, identity: dict[str, Any] | None = None) -> dict[str, int]:
    """Check a map completely: every byte against the manifest's sha256, then every structural
    check of :meth:`MapDatabase.open` (and the model ``identity`` if given). Returns {file: bytes}
    verified ({} for a version 1 map, which records no checksums); raises :class:`MapError`."""
    with MapDatabase.open(path, identity, verify=True) as db:
        return db.verified
