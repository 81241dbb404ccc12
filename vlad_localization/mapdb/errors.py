"""The exception type of the map database (and its write failures)."""
from __future__ import annotations


class MapError(ValueError):
    """A map cannot be opened, built or merged; the message names the file and the problem."""


class MapWriteError(MapError):
    """A file of a map being written could not be written (disk full, I/O error): the message
    names the file; :class:`~vlad_localization.mapdb.writer.MapWriter` reports it for the map."""
