"""The one exception type of the map database."""
from __future__ import annotations


class MapError(ValueError):
    """A map cannot be opened, built or merged; the message names the file and the problem."""
