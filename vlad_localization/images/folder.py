"""Frames from an image folder, with optional per-image stamps and poses from a CSV file.

Accepted CSV layouts (comma-separated; ``#`` lines and blank lines ignored):

* with a header row naming the columns (any order, extra columns ignored):
  ``file`` (or filename / image / name / path) and optionally a stamp, ``stamp_ns`` (integer ns)
  or ``stamp`` / ``time`` / ``timestamp`` (float seconds), and optionally a pose, ``x, y`` with
  optional ``z`` (default 0) and orientation either ``qx, qy, qz, qw`` or ``yaw`` (rad; default
  identity). E.g. ``file,stamp_ns,x,y,z,qx,qy,qz,qw`` or ``file,x,y,yaw``.
* without a header: ``file,x,y,yaw`` (4 columns, e.g. the campus_loop_72 ``data.csv``) or
  ``file,x,y,z,qx,qy,qz,qw`` (8 columns).

``file`` is an image name in the folder, or a path relative to the CSV's directory (so one CSV
may describe several folders, e.g. ``ref/0.png`` and ``query/0.png``); rows naming images that
exist nowhere are an error, rows for images in other folders are ignored.

Without stamps, frame ``i`` (natural order) is stamped ``i / fps`` seconds (``fps`` 1 by default).
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .frames import NS_PER_S, Frame, Pose, nanoseconds
from .io import list_images, load_rgb

FILE_COLUMNS = ("file", "filename", "image", "name", "path")
SECONDS_COLUMNS = ("stamp", "time", "timestamp")
POSE_COLUMNS = ("x", "y", "z", "qx", "qy", "qz", "qw", "yaw")


@dataclass(frozen=True)
class CsvRow:
    """What one CSV row says about one image."""

    path: Path
    stamp_ns: int | None
    pose: Pose | None


class FolderFrames(list):
    """The frames of an image folder: a list of :class:`Frame` that is a
    :class:`~vlad_localization.images.frames.FrameSource` (``origin`` the folder's absolute path; no
    camera models, nothing skipped: an unreadable image fails when its pixels are read)."""

    camera_models = False

    def __init__(self, frames: Iterable[Frame], origin: str):
        super().__init__(frames)
        self.origin = origin
        self.skipped: dict[str, int] = {}

    def expected(self) -> int:
        return len(self)

    def summary(self) -> str:
        return f"{len(self)} frames"


def iter_folder(folder: str | Path, poses_csv: str | Path | None = None, fps: float = 1.0) -> FolderFrames:
    """Frames for the images directly in ``folder`` in natural order (pixels loaded lazily), as a
    :class:`FolderFrames` list.

    Validates the folder and CSV at once (errors are raised here, not mid-iteration).

    ``poses_csv``: optional stamps/poses (layouts in the module doc); without stamps there, frame
    ``i`` is stamped ``i / fps`` seconds. ``frame_id`` is the folder
    name, ``source`` the image path. Images the CSV does not list get ``pose=None``; if the CSV has
    stamps, every image must be listed.
    """
    images = list_images(folder)
    rows = {} if poses_csv is None else read_poses_csv(poses_csv, folder)
    has_stamps = any(r.stamp_ns is not None for r in rows.values())
    if has_stamps:
        unstamped = [r.path.name for r in rows.values() if r.stamp_ns is None]
        if unstamped:
            raise ValueError(f"{poses_csv} has stamps but not for {len(unstamped)} image(s) (e.g. "
                             f"{unstamped[:3]}): give every row a stamp, or none")
        unlisted = [p.name for p in images if _absolute(p) not in rows]
        if unlisted:
            raise ValueError(
                f"{poses_csv} has stamps but does not list {len(unlisted)} image(s) of {folder} "
                f"(e.g. {unlisted[:3]}): add rows for them or remove them from the folder"
            )
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frame_id = Path(folder).resolve().name
    frames = []
    for index, path in enumerate(images):
        row = rows.get(_absolute(path))
        stamp = row.stamp_ns if row is not None and row.stamp_ns is not None else round(index * NS_PER_S / fps)
        pose = row.pose if row is not None else None
        frames.append(Frame(stamp, frame_id, str(path), pose, loader=partial(load_rgb, path)))
    return FolderFrames(frames, str(Path(folder).absolute()))


def read_poses_csv(poses_csv: str | Path, folder: str | Path) -> dict[Path, CsvRow]:
    """The CSV's rows for images of ``folder``, keyed by absolute image path (symlinks kept)."""
    poses_csv, folder = Path(poses_csv), Path(folder)
    if not poses_csv.is_file():
        raise FileNotFoundError(f"poses CSV {poses_csv} does not exist")
    with open(poses_csv, newline="") as fh:
        reader = csv.reader(fh)
        numbered = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r) and not r[0].startswith("#")]
    if not numbered:
        return {}
    lines = [r for _, r in numbered]
    columns, body = _columns(lines, poses_csv)
    folder_abs = _absolute(folder)
    rows = {}
    for lineno, cells in numbered[len(lines) - len(body):]:
        values = dict(zip(columns, (c.strip() for c in cells)))
        try:
            row = _parse_row(values, folder, poses_csv.parent)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{poses_csv} line {lineno} ({','.join(cells)}): {exc}") from None
        if row.path.parent == folder_abs:
            rows[row.path] = row
    return rows


def _columns(lines: list[list[str]], poses_csv: Path) -> tuple[list[str], list[list[str]]]:
    """(column names, data rows): from the header row, or implied by the column count."""
    first = [c.strip().lower() for c in lines[0]]
    if any(c in FILE_COLUMNS for c in first):
        return first, lines[1:]
    implied = {4: ["file", "x", "y", "yaw"], 8: ["file", "x", "y", "z", "qx", "qy", "qz", "qw"]}
    if len(first) not in implied:
        raise ValueError(
            f"{poses_csv}: no header row (a 'file' column) and {len(first)} columns; headerless CSVs "
            "must be file,x,y,yaw or file,x,y,z,qx,qy,qz,qw - otherwise add a header such as "
            "file,stamp_ns,x,y,z,qx,qy,qz,qw"
        )
    return implied[len(first)], lines


def _parse_row(values: dict[str, str], folder: Path, csv_dir: Path) -> CsvRow:
    name = next(values[c] for c in FILE_COLUMNS if c in values)
    path = _locate(name, folder, csv_dir)
    stamp = None
    if values.get("stamp_ns"):
        stamp = int(values["stamp_ns"])
    else:
        seconds = next((values[c] for c in SECONDS_COLUMNS if values.get(c)), None)
        stamp = None if seconds is None else nanoseconds(seconds)
    num = {c: float(values[c]) for c in POSE_COLUMNS if values.get(c)}  # the pose cells given
    if num and not ("x" in num and "y" in num):
        raise ValueError(f"a pose needs both x and y (this row gives only {', '.join(num)})")
    if not all(math.isfinite(v) for v in num.values()):
        raise ValueError("pose values must be finite numbers (no nan/inf)")
    pose = None
    if num:
        position = (num["x"], num["y"], num.get("z", 0.0))
        if all(c in num for c in ("qx", "qy", "qz", "qw")):
            q = tuple(num[c] for c in ("qx", "qy", "qz", "qw"))
            norm = math.sqrt(sum(v * v for v in q))
            if not norm > 0:
                raise ValueError("orientation quaternion is zero")
            pose = Pose(position, q if abs(norm - 1) < 1e-6 else tuple(v / norm for v in q))
        elif "yaw" in num:
            pose = Pose.from_xy_yaw(*position[:2], num["yaw"], z=position[2])
        else:
            pose = Pose(position)
    return CsvRow(path, stamp, pose)


def _locate(name: str, folder: Path, csv_dir: Path) -> Path:
    for candidate in (folder / name, csv_dir / name):
        if candidate.is_file():
            return _absolute(candidate)
    raise ValueError(f"image {name!r} is neither in {folder} nor relative to {csv_dir}")


def _absolute(path: Path) -> Path:
    """Absolute, normalised path without resolving symlinks (a folder of links keeps its poses)."""
    return Path(os.path.abspath(path))
