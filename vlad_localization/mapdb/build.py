"""Building a map from a stream of frames: keyframe selection, batched encoding, atomic write."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from vlad_localization.images.frames import FrameSource

from .keyframes import KeyframeSelector
from .metadata import Keyframe, encode_thumbnail
from .patch_store import PATCH_DTYPE
from .views import ViewCapture
from .writer import MapWriter

log = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    """What a build did: ``keyframes`` added, ``frames`` read, ``skipped`` by reason, size, time."""

    path: Path
    frames: int = 0
    keyframes: int = 0
    total_keyframes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    appended: bool = False
    views: dict[str, int] = field(default_factory=dict)  # ViewCapture.counts

    @property
    def keyframes_per_s(self) -> float:
        return self.keyframes / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        verb = "appended to" if self.appended else "wrote"
        views = self.views.get("views", 0)
        views = (f"camera model of {views} ({self.views.get('depth', 0)} with depth)" if views
                 else "no camera model (give --intrinsics): verification against it uses the query's")
        return (
            f"{verb} map {self.path}: {self.keyframes} keyframes from {self.frames} frames "
            f"(map total {self.total_keyframes}); skipped {sum(self.skipped.values())} ({skipped}); "
            f"views: {views}; "
            f"{self.bytes / 1e6:.1f} MB on disk; {self.seconds:.1f} s ({self.keyframes_per_s:.1f} keyframes/s)"
        )


def build_map(out: str | Path, frames: Iterable, encoder, config, sources: Sequence[str] = (),
              append: bool = False, progress: bool = True, total: int | None = None,
              depth_dir: str | Path | None = None) -> BuildSummary:
    """Encode ``frames`` (:class:`~vlad_localization.images.Frame`) into a map at ``out``.

    Frames pass :class:`KeyframeSelector` (``config.map`` thresholds), are encoded in batches of
    ``config.model.batch_size`` and written through :class:`MapWriter` (atomic; ``append`` adds a
    run to the existing map), each with its verification view (:class:`ViewCapture`: the frame's
    own camera model or ``verification.intrinsics``, the image with ``map.store_views``, the depth
    image of the same name in ``depth_dir``). A :class:`~vlad_localization.images.frames.FrameSource`'s
    ``skipped`` counts (a bag's bad frames) are merged into the summary. Raises :class:`MapError` when nothing
    was selected.
    """
    start = time.perf_counter()
    selector = KeyframeSelector.from_config(config.map)
    summary = BuildSummary(Path(out).absolute(), appended=append)
    read_errors: Counter[str] = Counter()
    batch_size = max(1, int(config.model.batch_size))
    capture = ViewCapture.from_config(config, depth_dir)
    with MapWriter.from_config(out, encoder.identity(), config.map, append=append) as writer:
        batch: list = []
        bar = tqdm(frames, total=total, unit="frame", desc="build-map", disable=not progress, dynamic_ncols=True)
        for frame in bar:
            summary.frames += 1
            if not selector.prefilter(frame.stamp_ns, _position(frame)):
                continue
            try:
                frame.rgb  # load now so an unreadable file is skipped, not fatal
            except (ValueError, FileNotFoundError) as exc:
                read_errors["unreadable_image"] += 1
                log.warning("skipping %s: %s", frame.source, exc)
                continue
            batch.append(frame)
            if len(batch) >= batch_size:
                _flush(batch, encoder, selector, writer, config.map, capture)
                bar.set_postfix(keyframes=writer.added)
        _flush(batch, encoder, selector, writer, config.map, capture)
        bar.close()
        source_skipped = frames.skipped if isinstance(frames, FrameSource) else {}
        skipped = Counter(selector.skipped) + read_errors + Counter(dict(source_skipped))
        summary.skipped = dict(skipped)
        summary.keyframes = writer.added
        summary.views = dict(capture.counts)
        manifest = writer.commit(sources, summary.skipped)
    summary.total_keyframes = manifest.keyframes
    summary.bytes = sum(p.stat().st_size for p in summary.path.iterdir() if p.is_file())
    summary.seconds = time.perf_counter() - start
    return summary


def _position(frame):
    pose = getattr(frame, "pose", None)
    return None if pose is None else tuple(pose.position)


def _flush(batch: list, encoder, selector: KeyframeSelector, writer: MapWriter, map_cfg, capture) -> None:
    """Encode a batch, keep the frames the selector accepts, write them; empties ``batch``."""
    if not batch:
        return
    desc = encoder.encode([f.rgb for f in batch])
    g, patches = desc.numpy()
    keep = [i for i, f in enumerate(batch) if selector.accept(f.stamp_ns, _position(f), g[i])]
    if keep:
        keyframes = [_keyframe(batch[i]) for i in keep]
        thumbs = [encode_thumbnail(batch[i].rgb, map_cfg.thumbnail_width) for i in keep] if map_cfg.store_thumbnails else None
        writer.add(g[keep], {p: a[keep].astype(PATCH_DTYPE) for p, a in patches.items()}, keyframes,
                   grid=desc.grid, image_size=desc.image_size, thumbnails=thumbs,
                   views=[capture(batch[i]) for i in keep])
    for f in batch:  # drop pixels of lazily loaded frames
        if getattr(f, "loader", None) is not None:
            f.image = None
    batch.clear()


def _keyframe(frame) -> Keyframe:
    pose = getattr(frame, "pose", None)
    return Keyframe(
        id=-1,
        stamp_ns=None if frame.stamp_ns is None else int(frame.stamp_ns),
        frame_id=str(getattr(frame, "frame_id", "") or ""),
        source=str(getattr(frame, "source", "") or ""),
        position=None if pose is None else tuple(float(v) for v in pose.position),
        orientation=None if pose is None else tuple(float(v) for v in pose.orientation),
        extra=dict(getattr(frame, "extra", None) or {}),
    )
