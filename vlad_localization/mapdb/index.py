"""The global-descriptor index: faiss, inner product on L2-normalised vectors, ids = keyframe ids.

Specs (``map.index``): ``Flat`` (exact, default), ``IVF<n>,Flat``, ``IVF<n>,PQ<m>`` and ``HNSW<M>``.
Search parameters (``nprobe``, ``efSearch``) are set from :class:`~vlad_localization.config.MapConfig`.
Every index is wrapped in ``IndexIDMap2`` so search returns keyframe ids, not row numbers.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import MapError, MapWriteError

log = logging.getLogger(__name__)

_SPECS = (
    (re.compile(r"^Flat$"), "flat"),
    (re.compile(r"^IVF(\d+),Flat$"), "ivf"),
    (re.compile(r"^IVF(\d+),PQ(\d+)(?:x(\d+))?(?:np)?$"), "ivfpq"),
    (re.compile(r"^HNSW(\d+)$"), "hnsw"),
)
MIN_POINTS_PER_CENTROID = 39  # faiss' own warning threshold for k-means
SMALL_BATCH = 4  # fewer queries search single-threaded (no OpenMP wake-up cost, steady latency)
SMALL_TRAIN = 50_000  # train smaller sets single-threaded: OpenMP spin-waits badly on busy CPUs


@contextmanager
def omp_threads(n: int | None):
    """Temporarily run faiss with ``n`` OpenMP threads (None: unchanged)."""
    before = faiss.omp_get_max_threads()
    if n:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec: kind plus its numbers (``nlist``, ``m``, ``nbits``, ``M``)."""

    kind: str  # flat | ivf | ivfpq | hnsw
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    hnsw_m: int = 0

    @classmethod
    def parse(cls, spec: str) -> "IndexSpec":
        text = str(spec).replace(" ", "")
        for pattern, kind in _SPECS:
            match = pattern.match(text)
            if not match:
                continue
            nums = [int(g) for g in match.groups() if g is not None]
            if any(n < 1 for n in nums):
                break
            if kind == "ivf":
                return cls(kind, nlist=nums[0])
            if kind == "ivfpq":
                return cls(kind, nlist=nums[0], m=nums[1], nbits=nums[2] if len(nums) > 2 else 8)
            if kind == "hnsw":
                return cls(kind, hnsw_m=nums[0])
            return cls(kind)
        raise MapError(f"index spec {spec!r} not understood; use Flat, IVF<n>,Flat, IVF<n>,PQ<m> or HNSW<M>")

    def fitted(self, n: int, dim: int) -> "IndexSpec":
        """This spec adapted to ``n`` training vectors of ``dim`` dims (fewer lists/bits on tiny maps)."""
        if self.kind in ("ivf", "ivfpq"):
            nlist = max(1, min(self.nlist, n // MIN_POINTS_PER_CENTROID))
            nbits = self.nbits
            if self.kind == "ivfpq":
                if dim % self.m:
                    raise MapError(f"index IVF{self.nlist},PQ{self.m}: PQ m={self.m} must divide the descriptor dim {dim}")
                nbits = max(1, min(self.nbits, int(math.log2(max(n, 2)))))
            return IndexSpec(self.kind, nlist=nlist, m=self.m, nbits=nbits)
        return self

    def factory(self) -> str:
        return {
            "flat": "Flat",
            "ivf": f"IVF{self.nlist},Flat",
            "ivfpq": f"IVF{self.nlist},PQ{self.m}x{self.nbits}np",  # np: no polysemous training
            "hnsw": f"HNSW{self.hnsw_m}",
        }[self.kind]


REFINE = 4  # shortlist factor of lossy (PQ) indexes, re-scored exactly


def blas_top_k(vectors: np.ndarray, ids: np.ndarray, scratch: np.ndarray, q: np.ndarray,
               k: int, excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (similarities descending), one BLAS matrix-vector product per
    query into a reused ``scratch`` buffer (a fresh 100k-float result costs page faults).
    ``excluded`` (bool per row) rows are never returned; ``k`` must not exceed the others."""
    sims_out, ids_out = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    for i, query in enumerate(q):
        sims = np.dot(vectors, query, out=scratch)
        if excluded is not None:
            sims[excluded] = -np.inf
        rows = np.argpartition(sims, len(sims) - k)[-k:] if k < len(sims) else np.arange(len(sims))
        rows = rows[np.argsort(-sims[rows], kind="stable")]
        sims_out[i], ids_out[i] = sims[rows], ids[rows]
    return sims_out, ids_out


def _rescored(cand: np.ndarray, exact: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of each row of shortlisted ids ``cand`` by exact inner product with ``exact[id]``."""
    sims = np.full(cand.shape, -np.inf, np.float32)
    for r in range(len(q)):
        ok = cand[r] >= 0
        sims[r, ok] = np.asarray(exact[cand[r, ok]]) @ q[r]
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(cand, order, 1)
    sims = np.take_along_axis(sims, order, 1)
    ids[~np.isfinite(sims)] = -1
    return sims, ids


class GlobalIndex:
    """A faiss index of keyframe global descriptors: ``build``/``add``/``search``/``save``/``load``."""

    def __init__(self, index: faiss.Index, spec: str):
        self.index = index
        self.spec = spec  # effective faiss factory string
        self._gpu = False
        self._flat = None  # cached (vectors view, ids, scratch) of a Flat index for BLAS search
        self._flat_lock = threading.Lock()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, spec: str, dim: int, n_train: int) -> "GlobalIndex":
        """An empty (untrained) index for ``spec``, sized for ``n_train`` training vectors."""
        fitted = IndexSpec.parse(spec).fitted(n_train, dim)
        inner = faiss.index_factory(int(dim), fitted.factory(), faiss.METRIC_INNER_PRODUCT)
        if fitted.factory() != spec:
            log.info("index %s fitted to %d keyframes as %s", spec, n_train, fitted.factory())
        return cls(faiss.IndexIDMap2(inner), fitted.factory())

    @classmethod
    def build(cls, spec: str, vectors: np.ndarray, ids: np.ndarray | None = None) -> "GlobalIndex":
        """Create, train and fill an index from (N, D) L2-normalised vectors."""
        x = _as_f32(vectors)
        index = cls.create(spec, x.shape[1], len(x))
        with omp_threads(1 if len(x) < SMALL_TRAIN else None):
            index.train(x)
            index.add(x, np.arange(len(x)) if ids is None else ids)
        return index

    # ------------------------------------------------------------------ faiss-like verbs
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def lossy(self) -> bool:
        """True for compressed (PQ) indexes whose similarities are approximate."""
        return "PQ" in self.spec

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained and len(vectors):
            self.index.train(_as_f32(vectors))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        x = _as_f32(vectors)
        if len(x):
            self._flat = None  # faiss may reallocate its storage
            self.index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, exact: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (Q, k) float32, ids (Q, k) int64); missing results have id -1.

        For a lossy (PQ) index, ``exact`` (the float32 vectors, rows indexed by id) re-scores a
        shortlist of ``REFINE * k`` exactly, so the similarities and the order within the probed
        lists are exact."""
        q = _as_f32(queries)
        if q.ndim == 1:
            q = q[None]
        if q.shape[1] != self.dim:
            raise ValueError(f"query descriptor has {q.shape[1]} dims, the map index {self.dim}")
        k = max(1, min(int(k), max(self.ntotal, 1)))
        if exact is not None and self.lossy:
            return _rescored(self._search(q, k * REFINE)[1], exact, q, k)
        return self._search(q, k)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        flat = self._flat_storage() if len(q) < SMALL_BATCH else None
        if flat is not None:
            with self._flat_lock:
                return blas_top_k(*flat, q, k)
        with omp_threads(1 if len(q) < SMALL_BATCH and not self._gpu else None):
            return self.index.search(q, k)

    def _flat_storage(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(vectors (N, D), ids (N,), scratch (N,)) viewing a CPU Flat index's storage, else None.

        faiss searches a single query with one thread; a BLAS matrix-vector product over the same
        storage uses every core, which is what a robot querying one frame at a time needs."""
        if self._gpu or self.spec != "Flat" or self.ntotal == 0:
            return None
        if self._flat is None:
            inner = faiss.downcast_index(self.index.index)
            vectors = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
            self._flat = (vectors, faiss.vector_to_array(self.index.id_map), np.empty(inner.ntotal, np.float32))
        return self._flat

    def set_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set IVF ``nprobe`` / HNSW ``efSearch`` (ignored by index types without them)."""
        if self._gpu:  # pragma: no cover - needs faiss-gpu; GPU IVF indexes are set through their parameter space
            if nprobe is not None and self.spec.startswith("IVF"):
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", int(nprobe))
            return
        inner = faiss.downcast_index(self.index.index) if hasattr(self.index, "index") else self.index
        if nprobe is not None:
            try:
                ivf = faiss.extract_index_ivf(inner)
                ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))
            except (RuntimeError, AttributeError):
                pass
        if ef_search is not None and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(ef_search)

    def to_gpu(self) -> bool:
        """Move search to GPU 0 when faiss-gpu and a GPU are present; returns whether it did."""
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            log.warning("map.use_gpu set but faiss-gpu / a GPU is not available: searching on CPU")
            return False
        try:  # pragma: no cover - needs faiss-gpu
            self._res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._res, 0, self.index)
            self._gpu = True
            return True
        except RuntimeError as exc:  # pragma: no cover - e.g. HNSW has no GPU version
            log.warning("index %s cannot move to GPU (%s): searching on CPU", self.spec, exc)
            return False

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for ``ids`` (exact for Flat/IVF-Flat/HNSW, approximate for PQ)."""
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        index = faiss.index_gpu_to_cpu(self.index) if self._gpu else self.index  # pragma: no branch
        try:
            faiss.write_index(index, str(path))
        except RuntimeError as exc:  # faiss reports a failed write (disk full, I/O error) this way
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "write failed"
            raise MapWriteError(f"{Path(path).name}: {detail}") from exc

    @classmethod
    def load(cls, path: Path, spec: str) -> "GlobalIndex":
        path = Path(path)
        if not path.is_file():
            raise MapError(f"{path}: global index file missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise MapError(f"{path}: global index file is truncated or corrupt ({first})") from exc
        return cls(index, spec)


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))
