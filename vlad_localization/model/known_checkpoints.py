"""Checkpoints known by name (the official Patch-NetVLAD ones) and the cache they are kept in.

    resolve_checkpoint_path("pittsburgh_WPCA512")  # -> ~/.cache/vlad_localization/pittsburgh_WPCA512.pth.tar

The table is data: ``official_checkpoints.yaml`` beside this module, plus an optional extra table
of the same format named by ``$VLAD_LOCALIZATION_CHECKPOINTS`` (its entries add to or replace the
shipped ones). The cache directory is ``$VLAD_LOCALIZATION_CACHE``, else
``$XDG_CACHE_HOME/vlad_localization``, else ``~/.cache/vlad_localization``. Nothing here downloads:
see :mod:`vlad_localization.model.weights`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..choices import BACKBONES

TABLE_FILE = Path(__file__).with_name("official_checkpoints.yaml")
EXTRA_TABLE_ENV = "VLAD_LOCALIZATION_CHECKPOINTS"
CACHE_ENV = "VLAD_LOCALIZATION_CACHE"
SUFFIX = ".pth.tar"
# What a preset fixes that a model (checkpoint or map) must share to fit it. num_clusters is not
# among them: the encoder takes it from the checkpoint (the Mapillary models have 16, the
# Pittsburgh ones 64) and the official presets run both.
FIT_KEYS = ("backbone", "num_pcs", "patch_sizes", "strides", "image_height", "image_width")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TableError(ValueError):
    """A checkpoint table file is malformed; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class KnownCheckpoint:
    """One table entry: where the file is served, what it must be and what it must contain."""

    name: str
    url: str
    size: int | None  # exact bytes, None when unknown (then the server's Content-Length is checked)
    sha256: str | None
    backbone: str
    num_clusters: int | None
    num_pcs: int | None

    @property
    def file(self) -> str:
        """The file name on the server (the last part of its URL)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def urls_from(self, mirror: str | None = None) -> list[str]:
        """The URLs to try in turn: the table's; with a mirror ``mirror/<file>`` (a copy of the
        hub), then ``mirror/<name>.pth.tar`` (a served copy of a cache) when the names differ."""
        if not mirror:
            return [self.url]
        files = dict.fromkeys((self.file, f"{self.name}{SUFFIX}"))
        return [f"{mirror.rstrip('/')}/{f}" for f in files]

    def shape(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "num_clusters": self.num_clusters, "num_pcs": self.num_pcs}


def cache_dir() -> Path:
    """``$VLAD_LOCALIZATION_CACHE``, else ``$XDG_CACHE_HOME/vlad_localization``, else ``~/.cache/vlad_localization``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "vlad_localization"


def cached_path(name: str) -> Path:
    """Where the checkpoint NAME lives in the cache (whether or not it is there)."""
    return cache_dir() / f"{name}{SUFFIX}"


def cache_state(entry: KnownCheckpoint) -> str:
    """``cached``, ``partial N%`` (a ``.part`` file to resume), ``wrong size`` or ``-`` (size check only)."""
    path = cached_path(entry.name)
    if path.is_file():
        return "cached" if entry.size in (None, path.stat().st_size) else "wrong size"
    part = path.with_name(path.name + ".part")
    if part.is_file():
        return f"partial {100 * part.stat().st_size // entry.size}%" if entry.size else "partial"
    return "-"


def load_table(extra: str | Path | None = None) -> dict[str, KnownCheckpoint]:
    """The shipped table, updated with ``extra`` (default: the file named by ``$VLAD_LOCALIZATION_CHECKPOINTS``)."""
    table = _read_table(TABLE_FILE)
    extra = extra if extra is not None else os.environ.get(EXTRA_TABLE_ENV)
    if extra:
        if not Path(extra).is_file():
            raise TableError(f"checkpoint table {extra} (${EXTRA_TABLE_ENV}) does not exist")
        table.update(_read_table(Path(extra)))
    return table


def find(name_or_path: str | Path, table: Mapping[str, KnownCheckpoint] | None = None) -> KnownCheckpoint | None:
    """The entry a bare name (``pittsburgh_WPCA512`` or ``pittsburgh_WPCA512.pth.tar``) refers to;
    None for anything with a directory part or not in the table."""
    text = str(name_or_path)
    if not text or os.sep in text or "/" in text:
        return None
    name = text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text
    return (load_table() if table is None else table).get(name)


def resolve_checkpoint_path(path: str | Path) -> tuple[Path, KnownCheckpoint | None]:
    """``(path, None)`` for an existing file or an unknown name (a real path always wins), else
    ``(cached file, entry)`` for a known name, whether or not the cached file exists yet."""
    path = Path(path)
    if path.exists():
        return path, None
    entry = find(path)
    return (cached_path(entry.name), entry) if entry else (path, None)


def presets_fitting(identity: Mapping[str, Any]) -> list[str]:
    """The presets whose model agrees with ``identity`` on every :data:`FIT_KEYS` key it has
    (a checkpoint: backbone and num_pcs; a map's manifest model: also patch sizes and input size)."""
    from ..config import PRESETS, load_config

    fits = []
    for preset in PRESETS:
        model = vars(load_config(preset).model)
        if all(_same(identity[k], model[k]) for k in FIT_KEYS if k in identity):
            fits.append(preset)
    return fits


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def _read_table(path: Path) -> dict[str, KnownCheckpoint]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TableError(f"checkpoint table {path}: unreadable ({exc})") from exc
    entries = data.get("checkpoints") if isinstance(data, Mapping) else None
    if not isinstance(entries, Mapping):
        raise TableError(f"checkpoint table {path}: expected a 'checkpoints:' mapping of names to entries")
    base = str(data.get("base_url") or "")
    return {str(name): _entry(path, str(name), fields, base) for name, fields in entries.items()}


def _entry(path: Path, name: str, fields: Any, base: str) -> KnownCheckpoint:
    where = f"checkpoint table {path}, entry {name!r}"
    if not isinstance(fields, Mapping):
        raise TableError(f"{where}: expected a mapping of fields")
    unknown = set(fields) - {"file", "url", "size", "sha256", "backbone", "num_clusters", "num_pcs"}
    if unknown:
        raise TableError(f"{where}: unknown key(s) {sorted(unknown)}")
    if fields.get("url"):
        url = str(fields["url"])
    elif fields.get("file") and base:
        url = f"{base.rstrip('/')}/{fields['file']}"
    else:
        raise TableError(f"{where}: give 'url', or 'file' and a top-level 'base_url'")
    sha = fields.get("sha256")
    if sha is not None and not _SHA256.fullmatch(str(sha).lower()):
        raise TableError(f"{where}: sha256 must be 64 hex digits or null, got {sha!r}")
    for key in ("size", "num_clusters", "num_pcs"):
        value = fields.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise TableError(f"{where}: {key} must be a positive integer or null, got {value!r}")
    backbone = fields.get("backbone", "vgg16")
    if backbone not in BACKBONES:
        raise TableError(f"{where}: backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    return KnownCheckpoint(name=name, url=url, size=fields.get("size"),
                           sha256=None if sha is None else str(sha).lower(), backbone=backbone,
                           num_clusters=fields.get("num_clusters"), num_pcs=fields.get("num_pcs"))
