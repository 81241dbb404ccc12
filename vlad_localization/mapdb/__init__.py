"""The map database: a directory with a manifest, a faiss global index, float16 patch arrays,
and SQLite keyframe metadata; built atomically, opened with validation.

    db = MapDatabase.open("maps/run1", identity=encoder.identity())
    sims, ids = db.search(global_desc, k=10)
    patches = db.patches(ids[0][:5])        # {P: (5, patches, D) float16}
    verify_map("maps/run1")                 # every byte against the manifest's sha256

:class:`LiveMap` holds a run's keyframes in memory (searchable while inserting) and saves them as one.
"""
from .build import BuildSummary, build_map
from .database import MapDatabase, verify_map
from .errors import MapError
from .index import GlobalIndex, IndexSpec
from .integrity import MapIntegrityError
from .keyframes import KeyframeSelector
from .live import LiveMap
from .manifest import Manifest, Run
from .merge import merge_maps
from .metadata import Keyframe
from .store import KeyframeStore, Store
from .writer import MapWriter, reindex_map

__all__ = [
    "BuildSummary",
    "GlobalIndex",
    "IndexSpec",
    "Keyframe",
    "KeyframeSelector",
    "KeyframeStore",
    "LiveMap",
    "Manifest",
    "MapDatabase",
    "MapError",
    "MapIntegrityError",
    "MapWriter",
    "Run",
    "Store",
    "build_map",
    "merge_maps",
    "reindex_map",
    "verify_map",
]
