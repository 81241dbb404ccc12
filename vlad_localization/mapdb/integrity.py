"""Map integrity: every file's size and sha256, recorded in the manifest when a map is written.

:func:`record_files` runs in :meth:`MapWriter.commit` just before the manifest (written last);
:func:`check_sizes` is the cheap check on every open; :func:`verify_files` reads every byte
(``MapDatabase.open(verify=True)``, ``map.verify_on_open``, :func:`~vlad_localization.mapdb.database.verify_map`,
``vlad-localization map-info --verify``). Hashes and checks only: opening a map is the database's.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import MapError
from .manifest import MANIFEST, Manifest

CHUNK = 4 << 20


class MapIntegrityError(MapError):
    """Files of a map that do not match its manifest; ``damaged`` maps each file name to the problem."""

    def __init__(self, path: Path, damaged: dict[str, str]):
        self.path, self.damaged = Path(path), dict(damaged)
        detail = "; ".join(f"{name}: {problem}" for name, problem in damaged.items())
        super().__init__(f"map {path} is damaged ({detail}); rebuild it or restore it from a copy")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def record_files(directory: Path) -> dict[str, dict[str, Any]]:
    """{name: {"bytes", "sha256"}} of every file of a (staged) map but the manifest."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file() and not p.name.startswith(MANIFEST))
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}


def check_sizes(directory: Path, manifest: Manifest) -> None:
    """The cheap check on open: every recorded file is there with its recorded size."""
    damaged = {name: problem for name in manifest.files
               if (problem := _size_problem(Path(directory) / name, manifest.files[name]["bytes"]))}
    if damaged:
        raise MapIntegrityError(directory, damaged)


def verify_files(directory: Path, manifest: Manifest) -> dict[str, int]:
    """Read every byte of every recorded file: {name: bytes} when all match, else
    :class:`MapIntegrityError` naming each damaged file. Version 1 maps record nothing: {}."""
    damaged, checked = {}, {}
    if not manifest.intact:
        damaged[MANIFEST] = "content differs from its own checksum (edited or damaged)"
    for name, expected in manifest.files.items():
        path = Path(directory) / name
        problem = _size_problem(path, expected["bytes"])
        if problem is None and (actual := file_sha256(path)) != expected["sha256"]:
            problem = f"sha256 {actual[:16]}... differs from the manifest's {expected['sha256'][:16]}..."
        if problem:
            damaged[name] = problem
        else:
            checked[name] = expected["bytes"]
    if damaged:
        raise MapIntegrityError(directory, damaged)
    return checked


def _size_problem(path: Path, expected: int) -> str | None:
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    return None if actual == expected else f"{actual} bytes, the manifest says {expected}: truncated or corrupt"
