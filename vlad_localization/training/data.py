"""Training data: the user's runs as frames with positions, and the split of their places.

A run is read by the readers ``build-map`` uses (an image folder with a poses CSV, a bag with an
odometry/pose topic) or from a map built with poses (its keyframes' source images, or the stored
views when the sources are gone). Every frame must have a pose: positions define the places.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from vlad_localization.images import Frame, iter_bag, iter_folder, load_rgb

NO_POSE_HINT = "give --poses CSV with --images, --pose-topic with --bag, or a map built with poses"


class TrainingDataError(ValueError):
    """The runs cannot be trained on (no poses, no positives, ...); the message says what to give."""


@dataclass
class Run:
    """One traversal: its frames (in time order) and a name for messages."""

    name: str
    frames: list[Frame]


@dataclass
class TrainingFrames:
    """Every frame of every run, flattened: ``run`` index, ``stamp_ns``, ``position`` (N, 3) m and
    ``yaw`` (N,) rad of frame i; ``frames[i]`` gives its image."""

    frames: list[Frame]
    run: np.ndarray
    stamp_ns: np.ndarray
    position: np.ndarray
    yaw: np.ndarray
    run_names: list[str]

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_runs(cls, runs: Sequence[Run]) -> "TrainingFrames":
        frames, run, stamps, pos, yaw = [], [], [], [], []
        for r, item in enumerate(runs):
            missing = [f for f in item.frames if f.pose is None]
            if not item.frames:
                raise TrainingDataError(f"run {item.name} has no frames")
            if missing:
                raise TrainingDataError(f"run {item.name}: {len(missing)} of {len(item.frames)} frames have no pose "
                                        f"(e.g. {missing[0].source or missing[0].stamp_ns}): {NO_POSE_HINT}")
            for f in item.frames:
                frames.append(f)
                run.append(r)
                stamps.append(int(f.stamp_ns))
                pos.append(f.pose.position)
                yaw.append(f.pose.yaw)
        return cls(frames, np.array(run, np.int64), np.array(stamps, np.int64), np.array(pos, np.float64),
                   np.array(yaw, np.float64), [r.name for r in runs])

    def subset(self, idx: np.ndarray) -> "TrainingFrames":
        idx = np.asarray(idx, np.int64)
        return TrainingFrames([self.frames[i] for i in idx], self.run[idx], self.stamp_ns[idx], self.position[idx],
                              self.yaw[idx], self.run_names)


def folder_run(folder: str | Path, poses_csv: str | Path | None, fps: float = 1.0) -> Run:
    """An image folder with its poses CSV (``build-map --images --poses`` layouts)."""
    return Run(str(folder), iter_folder(folder, poses_csv, fps=fps))


def bag_run(bag: str | Path, image_topic: str, pose_topic: str | None) -> Run:
    """A bag's image topic with poses interpolated from its odometry/pose topic (images kept in memory)."""
    return Run(f"{bag}:{image_topic}", list(iter_bag(bag, image_topic, pose_topic)))


def map_run(map_path: str | Path) -> Run:
    """The keyframes of a map built with poses: their source images, or the stored views' images."""
    from vlad_localization.images.frames import Pose
    from vlad_localization.mapdb import MapDatabase
    from vlad_localization.mapdb.metadata import decode_thumbnail

    with MapDatabase.open(map_path) as db:
        frames = []
        for kf in db.keyframes(list(range(db.size))):
            pose = None if kf.position is None else Pose(tuple(kf.position), tuple(kf.orientation or (0, 0, 0, 1)))
            source = Path(kf.source)
            if source.is_file():
                loader = partial(load_rgb, source)
            else:
                view = db.view(kf.id)
                if view is None or view.image is None:
                    raise TrainingDataError(f"map {map_path}: keyframe {kf.id}'s image {kf.source} is gone and the "
                                            "map stores no view image (built with --no-views): give the run itself")
                loader = partial(decode_thumbnail, view.image)
            frames.append(Frame(int(kf.stamp_ns or 0), kf.frame_id, kf.source, pose, loader=loader))
    return Run(str(map_path), frames)


def split_by_place(data: TrainingFrames, val_fraction: float, place_m: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) frame indices. Places are cells of ``place_m`` x ``place_m`` on the ground
    plane; a seeded ``val_fraction`` of the cells (never single frames) goes to validation, so a
    validation place is seen by no training frame of any run."""
    if not 0 <= val_fraction < 1:
        raise TrainingDataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    cells = np.floor(data.position[:, :2] / place_m).astype(np.int64)
    uniq, cell_of = np.unique(cells, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    n_val = int(round(val_fraction * len(uniq)))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= len(uniq) and val_fraction > 0:
        raise TrainingDataError(f"only {len(uniq)} place(s) of {place_m:g} m: too few to hold out {val_fraction:g} "
                                "of them; give longer runs or --val-fraction 0")
    val_cells = np.random.default_rng(seed).choice(len(uniq), n_val, replace=False)
    is_val = np.isin(cell_of, val_cells)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
