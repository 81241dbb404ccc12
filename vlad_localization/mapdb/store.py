"""The two keyframe stores a query searches (the prebuilt map, this run's keyframes): :class:`Store`
names them, :class:`KeyframeStore` is what both offer."""
from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import numpy as np

from .manifest import Manifest
from .metadata import Keyframe
from .views import KeyframeView


class Store(enum.IntEnum):
    """Which store a candidate's keyframe comes from. The value is what every output writes (the
    ``source`` of JSON records and ``~/candidates`` rows, the ``map`` column of
    ``~/loop_closure_edges``); :attr:`label` is its name in text."""

    PREBUILT = 0  # the prebuilt map (``map_path``)
    RUN = 1  # this run's own keyframes

    @property
    def label(self) -> str:
        """``prebuilt`` or ``run``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value) -> "Store":
        """A store from itself, its value (0, 1) or its :attr:`label`; ValueError otherwise."""
        if isinstance(value, str):
            for store in cls:
                if store.label == value:
                    return store
        elif not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ValueError(f"store {value!r}: use {' or '.join(s.label for s in cls)}")

    def keyframe_source(self, camera: int) -> str:
        """The ``source`` column of a keyframe this run's ``camera`` took (no image file: ``run:camera<i>``)."""
        return f"{self.label}:camera{int(camera)}"


@runtime_checkable
class KeyframeStore(Protocol):
    """What the query pipeline and the detector read from a store of keyframes, implemented by the
    prebuilt :class:`~vlad_localization.mapdb.MapDatabase` and this run's
    :class:`~vlad_localization.mapdb.LiveMap`. ``label`` names the store in messages (the map
    directory, or this run's keyframes); ``manifest`` is None while a run's store is empty.
    ``LiveMap.search`` and ``LiveMap.similarities`` also take the run's limits (``max_stamp_ns``,
    ``max_travel_m``)."""

    @property
    def label(self) -> str: ...

    @property
    def manifest(self) -> Manifest | None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def similarities(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def keyframes(self, ids) -> list[Keyframe]: ...

    def descriptors(self, ids) -> np.ndarray: ...

    def patches(self, ids) -> dict[int, np.ndarray]: ...

    def thumbnail(self, map_id: int) -> np.ndarray | None: ...

    def view(self, map_id: int) -> KeyframeView | None: ...


__all__ = ["KeyframeStore", "Store"]
