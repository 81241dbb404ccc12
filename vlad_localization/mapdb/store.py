"""The two keyframe stores a query searches (the prebuilt map, this run's keyframes): :class:`Store`."""
from __future__ import annotations

import enum


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


__all__ = ["Store"]
