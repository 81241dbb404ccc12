"""``manifest.json``: what a map directory contains and which model built it.

The manifest is written last (after every other file is complete and synced), so a map directory
with a readable manifest whose file sizes match is a complete map. Since version 2 it records every
other file's size and sha256 (``files``): sizes are checked on open, every byte by
:func:`~vlad_localization.mapdb.integrity.verify_map`. Since version 3 it counts what
``views.sqlite`` holds for verification (``views``: keyframes with a camera model, an image, a depth
image; ``{}`` when the map has no such file). Version 1 and 2 maps still open (no views).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import MapError

FORMAT = "vlad_localization.map"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: no per-file sizes and checksums; 1 and 2: no keyframe views
MANIFEST = "manifest.json"

# Identity keys that must agree between the model and the map (Encoder.identity()).
IDENTITY_KEYS = (
    "backbone",
    "num_clusters",
    "num_pcs",
    "vladv2",
    "patch_sizes",
    "strides",
    "image_height",
    "image_width",
    "checkpoint_sha256",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Run:
    """One mapping run (a build or an ``--append``): where its keyframes came from."""

    first_id: int
    keyframes: int
    sources: list[str]
    created: str = field(default_factory=now_iso)
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    """Contents of ``manifest.json`` (see docs/map-format.md)."""

    model: dict[str, Any]
    dim: int
    grid: tuple[int, int]
    image_size: tuple[int, int]
    num_patches: dict[int, int]  # patch size -> patches per keyframe
    index: dict[str, Any]  # spec, effective, metric, nprobe, ef_search
    keyframes: int = 0
    runs: list[Run] = field(default_factory=list)
    thumbnails: bool = True
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "sha256"} (v2)
    views: dict[str, int] = field(default_factory=dict)  # {"cameras", "images", "depth"} of views.sqlite (v3)
    intact: bool = True  # as read: the content matches its own "checksum" (v2; v1 has none)
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    format: str = FORMAT
    version: int = VERSION

    # ---------------------------------------------------------------- expected file sizes
    def expected_sizes(self) -> dict[str, int]:
        """File name -> exact byte size implied by the counts (raw arrays only)."""
        from .patch_store import patch_file  # local: avoid an import cycle

        sizes = {"global.f32": self.keyframes * self.dim * 4}
        for p, n in self.num_patches.items():
            sizes[patch_file(p)] = self.keyframes * n * self.dim * 2
        return sizes

    # ---------------------------------------------------------------- model identity
    def check_model(self, identity: dict[str, Any], map_path: Path | str = "") -> None:
        """Refuse a model whose identity differs from the one that built this map."""
        diffs = mismatches(self.model, identity)
        if diffs:
            detail = "; ".join(f"{k}: map {a!r} vs model {b!r}" for k, a, b in diffs)
            raise MapError(
                f"map {map_path} was built with model {describe(self.model)} but the model given is "
                f"{describe(identity)} ({detail}); rebuild the map with this model or use the "
                "checkpoint/config the map was built with"
            )

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["image_size"] = list(self.image_size)
        d["num_patches"] = {str(k): v for k, v in self.num_patches.items()}
        order = ["format", "version", "created", "updated", "keyframes", "model", "index", "dim",
                 "grid", "image_size", "num_patches", "thumbnails", "views", "runs", "files"]
        d = {k: d[k] for k in order}
        return {**d, "checksum": content_sha256(d)} if self.version >= 2 else d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> "Manifest":
        if d.get("format") != FORMAT:
            raise MapError(f"{where}: not a vlad_localization map manifest (format {d.get('format')!r})")
        if d.get("version") not in READABLE_VERSIONS:
            raise MapError(
                f"{where}: map format version {d.get('version')} is not supported by this "
                f"vlad_localization (reads versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild the map"
            )
        try:
            return cls(
                model=dict(d["model"]),
                dim=int(d["dim"]),
                grid=tuple(d["grid"]),
                image_size=tuple(d["image_size"]),
                num_patches={int(k): int(v) for k, v in d["num_patches"].items()},
                index=dict(d["index"]),
                keyframes=int(d["keyframes"]),
                runs=[Run(**r) for r in d.get("runs", [])],
                thumbnails=bool(d.get("thumbnails", False)),
                files={str(k): {"bytes": int(v["bytes"]), "sha256": str(v["sha256"])}
                       for k, v in (d["files"] if d["version"] >= 2 else {}).items()},
                views={str(k): int(v) for k, v in (d["views"] if d["version"] >= 3 else {}).items()},
                version=int(d["version"]),
                intact=d["version"] < 2 or d["checksum"] == content_sha256(d),
                created=d.get("created", ""),
                updated=d.get("updated", ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MapError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc

    def write(self, directory: Path) -> None:
        """Write ``manifest.json`` (always the current format version) and sync it."""
        self.version = VERSION
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise MapError(f"{path}: manifest missing (not a map directory, or an incomplete map)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MapError(f"{path}: unreadable or truncated manifest ({exc})") from exc
        if not isinstance(data, dict):
            raise MapError(f"{path}: malformed manifest (expected a JSON object)")
        return cls.from_dict(data, where=str(path))


def content_sha256(d: dict[str, Any]) -> str:
    """sha256 of a manifest's content (canonical JSON, its own ``checksum`` left out)."""
    content = json.dumps({k: v for k, v in d.items() if k != "checksum"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def mismatches(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Identity keys on which two model identities differ (lists/tuples compared as lists)."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [(k, a.get(k), b.get(k)) for k in IDENTITY_KEYS if norm(a.get(k)) != norm(b.get(k))]


def describe(identity: dict[str, Any]) -> str:
    """Short human description of a model identity."""
    sha = str(identity.get("checkpoint_sha256") or "?")[:12]
    return (
        f"[{identity.get('backbone')} K={identity.get('num_clusters')} PCs={identity.get('num_pcs')} "
        f"patches={identity.get('patch_sizes')} strides={identity.get('strides')} "
        f"input={identity.get('image_height')}x{identity.get('image_width')} sha256={sha}]"
    )
