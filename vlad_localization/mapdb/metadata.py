"""Keyframe metadata in SQLite (``keyframes.sqlite``): stamp, frame id, source, pose, extra JSON,
and an optional JPEG thumbnail per keyframe."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from .errors import MapError, MapWriteError

DB_FILE = "keyframes.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keyframes (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    stamp_ns INTEGER,
    frame_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL,
    extra TEXT
);
CREATE TABLE IF NOT EXISTS thumbnails (id INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);
"""
_COLUMNS = "id, run, stamp_ns, frame_id, source, px, py, pz, qx, qy, qz, qw, extra"


@dataclass
class Keyframe:
    """One map keyframe's metadata. ``pose`` is ``(position xyz, orientation xyzw)`` or None."""

    id: int
    run: int = 0
    stamp_ns: int | None = None
    frame_id: str = ""
    source: str = ""
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> tuple:
        p = self.position or (None,) * 3
        q = self.orientation or (None,) * 4
        extra = json.dumps(self.extra) if self.extra else None
        return (self.id, self.run, self.stamp_ns, self.frame_id, self.source, *p, *q, extra)

    @classmethod
    def from_row(cls, r: tuple) -> "Keyframe":
        has_pose = r[5] is not None
        return cls(
            id=r[0], run=r[1], stamp_ns=r[2], frame_id=r[3], source=r[4],
            position=tuple(r[5:8]) if has_pose else None,
            orientation=tuple(r[8:12]) if has_pose and r[8] is not None else None,
            extra=json.loads(r[12]) if r[12] else {},
        )


def connect(path: Path, schema: str | None, table: str, what: str) -> sqlite3.Connection:
    """An SQLite file of a map: created with ``schema``, or (None) opened read-only and checked to
    hold ``table``; a failure is a :class:`MapError` naming the file and ``what`` it is."""
    try:
        db = sqlite3.connect(str(path), check_same_thread=False)
        if schema is not None:
            db.executescript(schema)
        else:
            db.execute("PRAGMA query_only = ON")
            db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        return db
    except sqlite3.DatabaseError as exc:
        if schema is not None:
            raise MapError(f"{path}: could not create the {what} ({exc})") from exc
        raise MapError(f"{path}: {what} is corrupt or not SQLite ({exc})") from exc


class KeyframeTable:
    """The SQLite keyframe table: ``add``, ``get``, ``count``, ``thumbnail``."""

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise MapError(f"{self.path}: keyframe database missing from the map")
        self.db = connect(self.path, _SCHEMA if create else None, "keyframes", "keyframe database")

    def check(self, expected: int) -> None:
        """Integrity check plus row count against the manifest."""
        try:
            status = self.db.execute("PRAGMA quick_check").fetchone()[0]
            count = self.count()
        except sqlite3.DatabaseError as exc:
            raise MapError(f"{self.path}: keyframe database is corrupt ({exc})") from exc
        if status != "ok":
            raise MapError(f"{self.path}: keyframe database is corrupt (quick_check: {status})")
        if count != expected:
            raise MapError(f"{self.path}: {count} keyframes but the manifest says {expected}; rebuild the map")

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM keyframes").fetchone()[0])

    def add(self, keyframes: Iterable[Keyframe], thumbnails: dict[int, bytes] | None = None) -> None:
        try:
            with self.db:
                self.db.executemany(f"INSERT INTO keyframes ({_COLUMNS}) VALUES ({','.join('?' * 13)})",
                                    [k.row() for k in keyframes])
                if thumbnails:
                    self.db.executemany("INSERT INTO thumbnails (id, jpeg) VALUES (?, ?)", thumbnails.items())
        except sqlite3.OperationalError as exc:  # e.g. "database or disk is full", "disk I/O error"
            raise MapWriteError(f"{self.path.name}: {exc}") from exc

    def get(self, ids: Iterable[int]) -> list[Keyframe]:
        """Keyframes for ``ids``, in that order (KeyError for an unknown id)."""
        ids = [int(i) for i in ids]
        rows = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            q = f"SELECT {_COLUMNS} FROM keyframes WHERE id IN ({','.join('?' * len(part))})"
            rows.update({r[0]: r for r in self.db.execute(q, part)})
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"keyframe id(s) {missing[:5]} not in map {self.path.parent}")
        return [Keyframe.from_row(rows[i]) for i in ids]

    def iter_all(self, batch: int = 1000):
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM keyframes ORDER BY id")
        while rows := cur.fetchmany(batch):
            yield from (Keyframe.from_row(r) for r in rows)

    def thumbnail_bytes(self, map_id: int) -> bytes | None:
        row = self.db.execute("SELECT jpeg FROM thumbnails WHERE id = ?", (int(map_id),)).fetchone()
        return None if row is None else bytes(row[0])

    def iter_thumbnails(self):
        yield from self.db.execute("SELECT id, jpeg FROM thumbnails ORDER BY id")

    def stats(self) -> dict[str, Any]:
        q = "SELECT COUNT(*), COUNT(px), MIN(stamp_ns), MAX(stamp_ns) FROM keyframes"
        n, posed, t0, t1 = self.db.execute(q).fetchone()
        thumbs = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(jpeg)), 0) FROM thumbnails").fetchone()
        sources = self.db.execute("SELECT COUNT(DISTINCT source) FROM keyframes").fetchone()[0]
        return {"keyframes": n, "with_pose": posed, "first_stamp_ns": t0, "last_stamp_ns": t1,
                "distinct_sources": sources, "thumbnails": thumbs[0], "thumbnail_bytes": thumbs[1]}

    def close(self) -> None:
        self.db.close()

    def __del__(self) -> None:  # sqlite3 connections sit in reference cycles: free the fd with the table
        db = getattr(self, "db", None)
        if db is not None:
            db.close()


def encode_thumbnail(rgb: np.ndarray, width: int, quality: int = 85) -> bytes:
    """Downscale an RGB image to ``width`` pixels wide and JPEG-encode it."""
    h, w = rgb.shape[:2]
    width = max(1, min(int(width), w))
    small = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise ValueError("thumbnail JPEG encoding failed")
    return buf.tobytes()


def decode_thumbnail(data: bytes) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
