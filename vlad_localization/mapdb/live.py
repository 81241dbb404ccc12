"""This run's keyframes in memory: :class:`LiveMap`, searched for loop closures while the robot runs.

    live = LiveMap(encoder.identity(), max_keyframes=20000, eviction="oldest")
    kf_id = live.add(global_desc, {5: patches}, Keyframe(-1, stamp_ns=t), thumbnail=jpeg,
                     grid=desc.grid, image_size=desc.image_size)
    sims, ids = live.search(query, k=10, max_stamp_ns=t - gap_ns)   # exact inner product
    live.save("maps/run1")                                           # the map-database format

A keyframe may carry a :class:`~vlad_localization.mapdb.views.KeyframeView` (``add(..., view=)``:
its camera model and full-resolution image, for verifying a later loop closure with it): kept and
released with the keyframe's other data, saved to the map's ``views.sqlite``.

Storage: the global descriptors (float32) with their stamp and ``travel_m`` in one block of rows
that doubles when full and, once keyframes are evicted, is compacted into a fresh block after as
many insertions as it holds (one row copy per insertion, amortised); the float16 patch rows in
fixed chunks of ``chunk`` keyframes (ids ``c * chunk ...``), allocated as needed and released
whole, so neither growth nor eviction ever copies the patch descriptors.

Concurrency: one writer (``add``; several writers take turns) and any number of readers. A row is
written before it is published, and rows, once published, are never modified (growth and
compaction write fresh blocks), so readers take a consistent snapshot under a lock held for
microseconds and compute outside it: a reader never sees a half-inserted keyframe, and every id a
search returns has its metadata, patches and thumbnail.

Eviction (``eviction="oldest"``, at ``max_keyframes``): the oldest keyframe leaves the search at
once; its data stays readable until its chunk is released, which happens only after more than
``chunk`` further insertions, so a search's ids stay readable through the usual
search -> keyframes -> patches sequence. Inside ``with live.reading():`` nothing is released at all
(strict). ``eviction="refuse"``: ``add`` returns None once full. Ids are never reused.
"""
from __future__ import annotations

import math
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlad_localization.choices import EVICTIONS, names

from .errors import MapError
from .index import blas_top_k
from .manifest import Manifest
from .metadata import Keyframe, decode_thumbnail
from .patch_store import PATCH_DTYPE
from .views import KeyframeView
from .writer import MapWriter

MIN_ROWS = 64  # first block of global rows
MAX_CHUNK = 256  # patch rows per chunk (at most; a quarter of max_keyframes for small stores)
NO_STAMP = np.iinfo(np.int64).min  # a keyframe without a stamp passes every max_stamp_ns filter
TRAVEL_KEY = "travel_m"  # Keyframe.extra key: distance along the trajectory (set by the detector)
LABEL = "<live map: this run's keyframes>"


class LiveMap:
    """This run's keyframes in memory: appendable global rows + float16 patch rows + metadata,
    searchable while the writer inserts, saved atomically in the map-database format.

    ``identity`` is ``Encoder.identity()``; the layout (dim, grid, image size, patches per size)
    is fixed by the first :meth:`add`, before which :attr:`manifest` is None and :meth:`search`
    returns no results. See the module docstring for eviction and thread safety.
    """

    path = LABEL  # what messages name instead of a map directory (MapDatabase.path)

    def __init__(self, identity: dict[str, Any], max_keyframes: int = 20000, eviction: str = "oldest",
                 thumbnails: bool = True, chunk: int | None = None):
        if eviction not in EVICTIONS:
            raise MapError(f"eviction {eviction!r} is not one of {names(EVICTIONS)}")
        if int(max_keyframes) < 1:
            raise MapError(f"max_keyframes must be at least 1, got {max_keyframes!r}")
        self.identity = dict(identity)
        self.max_keyframes = int(max_keyframes)
        self.eviction = eviction
        self.thumbnails = bool(thumbnails)
        self.chunk = int(chunk) if chunk else max(1, min(MAX_CHUNK, self.max_keyframes // 4))
        self._lock = threading.Lock()  # guards the published state below (held for microseconds)
        self._write_lock = threading.Lock()  # writers take turns (growth is done outside _lock)
        self._layout: Manifest | None = None
        # global rows: ids first_id .. next_id-1 are rows start .. end-1 of the current block
        self._global = self._stamps = self._travel = None
        self._start = self._end = 0
        self._first_id = 0  # oldest searchable id
        self._next_id = 0
        self._evicted = 0
        # patch chunks {c: {P: (chunk, patches, D) float16}}, chunks held_lo.. (with metadata)
        self._chunks: dict[int, dict[int, np.ndarray]] = {}
        self._held_lo = 0  # lowest held chunk; ids from held_lo * chunk are readable
        self._meta: dict[int, Keyframe] = {}
        self._thumbs: dict[int, bytes] = {}
        self._views: dict[int, KeyframeView] = {}
        self._blob_bytes = self._meta_bytes = 0
        self._pins = 0
        self._closed = False

    # ------------------------------------------------------------------ state
    @property
    def size(self) -> int:
        """Searchable keyframes."""
        with self._lock:
            return self._size()

    def _size(self) -> int:
        return self._next_id - self._first_id

    def __len__(self) -> int:
        return self.size

    @property
    def evicted(self) -> int:
        """Keyframes evicted so far (oldest first)."""
        return self._evicted

    @property
    def full(self) -> bool:
        return self.size >= self.max_keyframes

    @property
    def next_id(self) -> int:
        """The id the next keyframe will get (ids are never reused)."""
        return self._next_id

    def live_ids(self) -> np.ndarray:
        """The searchable ids, oldest first (consecutive)."""
        with self._lock:
            return np.arange(self._first_id, self._next_id, dtype=np.int64)

    @property
    def manifest(self) -> Manifest | None:
        """A manifest of the current layout and size (model identity, dim, grid, image_size,
        num_patches, keyframes), as ``MapDatabase.manifest``; None before the first add."""
        with self._lock:
            if self._layout is None:
                return None
            m = self._layout
            return replace(m, keyframes=self._size(), model=dict(m.model), index=dict(m.index),
                           num_patches=dict(m.num_patches))

    @property
    def nbytes(self) -> int:
        """Bytes held: global rows (+ stamp, travel) of the searchable keyframes, patch rows,
        thumbnails, views and a metadata estimate of every readable keyframe (evicted ones until their
        chunk is released). Unwritten capacity (untouched pages) is not counted."""
        with self._lock:
            if self._layout is None:
                return 0
            m = self._layout
            patch_row = sum(n * m.dim for n in m.num_patches.values()) * np.dtype(PATCH_DTYPE).itemsize
            held = self._next_id - self._held_lo * self.chunk
            return (self._size() * (m.dim * 4 + 16) + held * patch_row + self._blob_bytes + self._meta_bytes)

    def stats(self) -> dict[str, Any]:
        """For diagnostics: keyframes, evicted, bytes, max_keyframes, eviction, full."""
        return {"keyframes": self.size, "evicted": self.evicted, "bytes": self.nbytes,
                "max_keyframes": self.max_keyframes, "eviction": self.eviction, "full": self.full}

    # ------------------------------------------------------------------ writing
    def add(self, global_desc: np.ndarray, patches: dict[int, np.ndarray], keyframe: Keyframe,
            thumbnail: bytes | None = None, grid=None, image_size=None, view: KeyframeView | None = None
            ) -> int | None:
        """Insert one keyframe: global (D,) float32 (L2-normalised), patches {P: (patches_P, D)}
        (stored float16: pass float16, e.g. torch ``.half()``, to skip numpy's slow conversion, 3 ms
        at the speed preset's 936 x 512), its metadata (``id`` assigned here and returned; ``extra["travel_m"]``
        feeds ``search``'s ``max_travel_m``), a JPEG thumbnail and its verification ``view``.
        ``grid``/``image_size`` are needed for the first add and checked afterwards. Returns None when full and
        ``eviction == "refuse"``; NaN/inf descriptors raise :class:`MapError`."""
        g, p16, travel = self._checked(global_desc, patches, keyframe, grid, image_size)
        with self._write_lock:
            if self._closed:
                raise MapError("the live map is closed")
            if self.full and self.eviction == "refuse":
                return None
            if self._layout is None:
                self._init_layout(g, p16, grid, image_size)
            self._check_layout(g, p16, grid, image_size)
            self._make_room()
            kf_id = self._next_id
            c, r = divmod(kf_id, self.chunk)
            chunk = self._chunks.get(c)
            if chunk is None:
                chunk = {p: np.empty((self.chunk, *a.shape), PATCH_DTYPE) for p, a in p16.items()}
            for p, a in p16.items():  # unpublished rows: no reader looks at them yet
                chunk[p][r] = a
            row = self._end
            self._global[row] = g
            self._stamps[row] = NO_STAMP if keyframe.stamp_ns is None else int(keyframe.stamp_ns)
            self._travel[row] = travel
            kf = replace(keyframe, id=kf_id, run=0, extra=dict(keyframe.extra or {}))
            thumb = bytes(thumbnail) if thumbnail is not None and self.thumbnails else None
            with self._lock:  # publish
                self._chunks[c] = chunk
                self._meta[kf_id] = kf
                self._meta_bytes += _meta_estimate(kf)
                if thumb is not None:
                    self._thumbs[kf_id] = thumb
                    self._blob_bytes += len(thumb)
                if view is not None:
                    self._views[kf_id] = view
                    self._blob_bytes += view.nbytes
                if self._size() >= self.max_keyframes:  # eviction == "oldest": the oldest leaves the search
                    self._start += 1
                    self._first_id += 1
                    self._evicted += 1
                self._end += 1
                self._next_id += 1
                self._release_chunks()
            return kf_id

    def _checked(self, global_desc, patches, keyframe, grid, image_size):
        """(global (D,) float32, {P: (n, D) float16}, travel) from one keyframe's inputs, checked."""
        if not isinstance(keyframe, Keyframe):
            raise TypeError(f"keyframe must be a mapdb.Keyframe, got {type(keyframe).__name__}")
        g = np.asarray(global_desc, np.float32)
        g = g.reshape(-1) if g.ndim == 2 and g.shape[0] == 1 else g
        if g.ndim != 1:
            raise MapError(f"a keyframe's global descriptor must be (D,), got shape {g.shape}")
        if not patches:
            raise MapError("a keyframe needs patch descriptors ({patch size: (patches, D)})")
        p16 = {}
        for p, a in patches.items():
            a = np.asarray(a)
            a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
            if a.ndim != 2 or a.shape[1] != len(g):
                raise MapError(f"patch size {p}: descriptors must be (patches, {len(g)}), got shape {a.shape}")
            with np.errstate(over="ignore"):  # overflow -> inf, refused below
                p16[int(p)] = a.astype(PATCH_DTYPE)  # a copy: the caller may reuse its array
        bad = [name for name, ok in [("global", np.isfinite(g).all())] +
               [(f"patch size {p}", _finite16(a)) for p, a in p16.items()] if not ok]
        if bad:  # a NaN keyframe would be every query's nearest neighbour (inf: float16 overflow)
            raise MapError(f"refusing a keyframe with NaN/inf descriptors ({', '.join(bad)}): check the encoder "
                           "(fp16 overflow? corrupt checkpoint?)")
        travel = (keyframe.extra or {}).get(TRAVEL_KEY)
        try:
            travel = math.nan if travel is None else float(travel)
        except (TypeError, ValueError):
            raise MapError(f"keyframe extra[{TRAVEL_KEY!r}] must be a number (metres), got {travel!r}") from None
        return g, p16, travel

    def _init_layout(self, g, p16, grid, image_size) -> None:
        if grid is None or image_size is None:
            raise MapError("the first keyframe of a live map needs grid and image_size (Descriptors.grid/.image_size)")
        self._layout = Manifest(
            model=dict(self.identity), dim=len(g), grid=tuple(int(v) for v in grid),
            image_size=tuple(int(v) for v in image_size), num_patches={p: a.shape[0] for p, a in p16.items()},
            index={"spec": "Flat", "effective": "Flat", "metric": "inner_product", "live": True},
            thumbnails=self.thumbnails,
        )
        self._global = np.empty((MIN_ROWS, len(g)), np.float32)
        self._stamps = np.empty(MIN_ROWS, np.int64)
        self._travel = np.empty(MIN_ROWS, np.float64)

    def _check_layout(self, g, p16, grid, image_size) -> None:
        m = self._layout
        if len(g) != m.dim:
            raise MapError(f"global descriptor has {len(g)} dims, the live map {m.dim}")
        shapes = {p: a.shape[0] for p, a in p16.items()}
        if shapes != m.num_patches:
            raise MapError(f"patches {shapes} (size: count) differ from the live map's {m.num_patches} "
                           "(all keyframes must be encoded at the same network input size)")
        for name, given, have in (("grid", grid, m.grid), ("image_size", image_size, m.image_size)):
            if given is not None and tuple(int(v) for v in given) != tuple(have):
                raise MapError(f"{name} {tuple(given)} differs from the live map's {tuple(have)}")

    def _make_room(self) -> None:
        """A free row at the end of the global block: when full, copy the searchable rows into a
        fresh block twice their number (growth, or compaction after evictions), outside the lock."""
        cap = len(self._global)
        if self._end < cap:
            return
        live = self._end - self._start
        rows = max(MIN_ROWS, 2 * live)
        blocks = (np.empty((rows, self._global.shape[1]), np.float32), np.empty(rows, np.int64),
                  np.empty(rows, np.float64))
        for new, old in zip(blocks, (self._global, self._stamps, self._travel)):
            new[:live] = old[self._start:self._end]  # readers still use the old block meanwhile
        with self._lock:
            self._global, self._stamps, self._travel = blocks
            self._start, self._end = 0, live

    def _release_chunks(self) -> None:
        """(Under the lock.) Free chunks entirely older than the oldest searchable id's chunk and
        the one before it, unless a ``reading()`` block is open."""
        while self._pins == 0 and (self._held_lo + 2) * self.chunk <= self._first_id:
            self._chunks.pop(self._held_lo, None)
            for i in range(self._held_lo * self.chunk, (self._held_lo + 1) * self.chunk):
                kf = self._meta.pop(i, None)
                self._meta_bytes -= 0 if kf is None else _meta_estimate(kf)
                thumb = self._thumbs.pop(i, None)
                self._blob_bytes -= len(thumb) if thumb is not None else 0
                view = self._views.pop(i, None)
                self._blob_bytes -= view.nbytes if view is not None else 0
            self._held_lo += 1

    # ------------------------------------------------------------------ reading
    @contextmanager
    def reading(self):
        """Within this block no evicted keyframe's data is released: ids from a search stay
        readable until it exits (strict; without it they stay readable for > ``chunk`` inserts)."""
        with self._lock:
            self._pins += 1
        try:
            yield self
        finally:
            with self._lock:
                self._pins -= 1

    def search(self, queries: np.ndarray, k: int, max_stamp_ns: int | None = None,
               max_travel_m: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-``k`` over the searchable keyframes with ``stamp_ns <=
        max_stamp_ns`` and ``travel_m <= max_travel_m`` (when given; keyframes without a stamp or
        travel pass): (similarities (Q, k') float32 descending, ids (Q, k') int64), ``k' = min(k,
        keyframes that pass)`` (0 columns when none do)."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        g, ids, allowed = self._searchable(q, max_stamp_ns, max_travel_m)
        k = min(int(k), int(allowed.sum()))
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        excluded = None if allowed.all() else ~allowed
        return blas_top_k(g, ids, np.empty(len(g), np.float32), q, k, excluded)

    def similarities(self, query: np.ndarray, max_stamp_ns: int | None = None,
                     max_travel_m: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, similarities) of one query (D,) with every keyframe :meth:`search` could return."""
        q = np.asarray(query, np.float32).reshape(1, -1)
        g, ids, allowed = self._searchable(q, max_stamp_ns, max_travel_m)
        return ids[allowed], (g @ q[0])[allowed]  # the product first: no copy of the rows

    def _searchable(self, q: np.ndarray, max_stamp_ns, max_travel_m):
        """(global rows, their ids, which pass the limits) of a consistent snapshot."""
        with self._lock:  # a snapshot: published rows never change
            if self._layout is None:
                return np.zeros((0, q.shape[1]), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
            g = self._global[self._start:self._end]
            stamps = self._stamps[self._start:self._end]
            travel = self._travel[self._start:self._end]
            first = self._first_id
        if q.ndim != 2 or q.shape[1] != g.shape[1]:
            raise ValueError(f"query descriptor has shape {q.shape[1:]}, the live map's are ({g.shape[1]},)")
        allowed = np.ones(len(g), bool)
        if max_stamp_ns is not None:
            allowed &= stamps <= int(max_stamp_ns)
        if max_travel_m is not None:
            allowed &= ~(travel > float(max_travel_m))  # NaN (no travel) passes
        return g, np.arange(first, first + len(g), dtype=np.int64), allowed

    def _readable(self, ids) -> list[int]:
        """(Under the lock.) ``ids`` as ints; KeyError for ids never added or already released."""
        ids = [int(i) for i in np.asarray(ids, np.int64).reshape(-1)]
        missing = [i for i in ids if i not in self._meta]
        if missing:
            raise KeyError(f"keyframe id(s) {missing[:5]} not in the live map (evicted, or never added; "
                           f"searchable ids are {self._first_id}..{self._next_id - 1})")
        return ids

    def keyframes(self, ids) -> list[Keyframe]:
        """Metadata of ``ids``, in that order (copies; KeyError for an unknown id)."""
        with self._lock:
            kfs = [self._meta[i] for i in self._readable(ids)]
        return [replace(k, extra=dict(k.extra)) for k in kfs]

    def keyframe(self, map_id: int) -> Keyframe:
        return self.keyframes([map_id])[0]

    def descriptors(self, ids) -> np.ndarray:
        """(len(ids), D) float32 global descriptors of searchable ``ids`` (KeyError for an evicted
        or unknown one)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        with self._lock:
            if len(ids) and (ids.min() < self._first_id or ids.max() >= self._next_id):
                raise KeyError(f"keyframe id(s) outside the searchable {self._first_id}..{self._next_id - 1}")
            return np.array(self._global[self._start + ids - self._first_id], np.float32)

    def patches(self, ids) -> dict[int, np.ndarray]:
        """{patch size: (len(ids), patches, D) float16} (copies; {} before the first add)."""
        with self._lock:
            ids = self._readable(ids)
            if self._layout is None:
                return {}
            rows = [(self._chunks[i // self.chunk], i % self.chunk) for i in ids]
            m = self._layout
        out = {p: np.empty((len(ids), n, m.dim), PATCH_DTYPE) for p, n in m.num_patches.items()}
        for j, (chunk, r) in enumerate(rows):  # published rows never change: copy outside the lock
            for p, a in out.items():
                a[j] = chunk[p][r]
        return out

    def thumbnail_bytes(self, map_id: int) -> bytes | None:
        with self._lock:
            return self._thumbs.get(self._readable([map_id])[0])

    def thumbnail(self, map_id: int) -> np.ndarray | None:
        """The keyframe's thumbnail as RGB uint8, or None when it has none."""
        data = self.thumbnail_bytes(map_id)
        return None if data is None else decode_thumbnail(data)

    def view(self, map_id: int) -> KeyframeView | None:
        """The keyframe's verification view (camera model, image), or None when it has none."""
        with self._lock:
            return self._views.get(self._readable([map_id])[0])

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, sources: Sequence[str] = (), index: str | None = None) -> Manifest:
        """Write the searchable keyframes as a map at ``path`` (one run), atomically through
        :class:`MapWriter`: the previous map there stays until the new one is complete, a killed
        save leaves it (or nothing) and its staging directory is removed by the next save.
        The snapshot is taken under the lock (references: rows never change), the writing done
        outside it, so inserts and searches go on meanwhile. Saved ids are renumbered from 0:
        saved id = live id - the oldest searchable id (equal to the live ids when nothing was
        evicted). ``index``: the map's index spec (default Flat)."""
        with self._lock:
            if self._closed:
                raise MapError("the live map is closed")
            if self._size() == 0:
                raise MapError(f"nothing to save to {path}: the live map has no keyframes yet")
            first, end = self._first_id, self._next_id
            g = self._global[self._start:self._end]
            chunks = {c: self._chunks[c] for c in range(first // self.chunk, (end - 1) // self.chunk + 1)}
            kfs = [self._meta[i] for i in range(first, end)]
            thumbs = [self._thumbs.get(i) for i in range(first, end)]
            views = [self._views.get(i) for i in range(first, end)]
            m = self._layout
        with MapWriter(path, self.identity, index, thumbnails=self.thumbnails) as writer:
            for c, chunk in chunks.items():
                lo, hi = max(first, c * self.chunk), min(end, (c + 1) * self.chunk)
                rows, part = slice(lo - c * self.chunk, hi - c * self.chunk), slice(lo - first, hi - first)
                writer.add(g[part], {p: a[rows] for p, a in chunk.items()}, kfs[part],
                           grid=m.grid, image_size=m.image_size, thumbnails=thumbs[part], views=views[part])
            return writer.commit(list(sources))

    def close(self) -> None:
        """Drop the keyframes (searches then return nothing; add and save refuse)."""
        with self._write_lock, self._lock:
            self._closed = True
            self._layout = None
            self._global = self._stamps = self._travel = None
            self._chunks.clear()
            self._meta.clear()
            self._thumbs.clear()
            self._views.clear()
            self._blob_bytes = self._meta_bytes = 0
            self._first_id = self._next_id

    def __enter__(self) -> "LiveMap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LiveMap(keyframes={self.size}, evicted={self.evicted}, max_keyframes={self.max_keyframes}, "
                f"eviction={self.eviction!r})")


def _finite16(a: np.ndarray) -> bool:
    """No NaN/inf in a float16 array (exponent bits all ones), ~10x faster than np.isfinite on float16."""
    return not ((a.view(np.uint16) & 0x7C00) == 0x7C00).any()


def _meta_estimate(kf: Keyframe) -> int:
    """Rough bytes of one keyframe's Python metadata (object, strings, pose tuples, extra)."""
    pose = 0 if kf.position is None else 7 * 24 + 2 * 80
    extra = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in kf.extra.items()) + (232 if kf.extra else 64)
    return 48 + 104 + sys.getsizeof(kf.frame_id) + sys.getsizeof(kf.source) + pose + extra + 32


__all__ = ["LiveMap", "TRAVEL_KEY"]
