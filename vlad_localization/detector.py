"""The per-frame loop-closure detector: one call per camera frame, shared by the node and ``replay``.

    det = LoopClosureDetector.from_config(load_config("speed"), "model.pth.tar", map_path=None)  # mode from config
    res = det.process(stamp_ns, rgb, pose=None, camera=0)
    res.candidates, res.loop_closure, res.keyframe, res.timings
    det.save_map("maps/today")              # this run's keyframes, as a map usable by build-map/merge-maps

Modes (``loop_closure.mode``, :data:`vlad_localization.choices.MODES`): ``localize`` searches the
prebuilt map only; ``loop_closure`` searches this run's own keyframes only; ``both`` searches both
(each candidate's ``source``: 0 = prebuilt map, 1 = this run). In ``loop_closure``/``both`` a
frame becomes a keyframe of the run with the ``map`` section's thresholds (the
:class:`~vlad_localization.mapdb.KeyframeSelector` that ``build-map`` uses, one per camera).

With ``verification.enabled`` and a camera model (``verification.intrinsics``, or the ``camera``
given to :meth:`process`, e.g. from ``sensor_msgs/CameraInfo``), an accepted loop closure is
verified geometrically (:meth:`Localizer.verify`): ``FrameResult.relative_pose`` is the match
camera's pose in the query camera's frame with its covariance, or a rejection reason. The run's
keyframes keep their view (camera model and, with ``map.store_views``, the full image as JPEG and
the frame's ``depth`` when given) in the :class:`LiveMap`, which :meth:`save_map` writes with them; a
closure against a keyframe with depth (or from a frame with depth) is metric (PnP). A prebuilt map's
keyframes are verified with the view it stores, or from the patch keypoints alone when it has none.

The run's search never returns keyframes taken less than ``loop_closure.min_time_gap_s`` before
the query, nor, when poses are known, less than ``loop_closure.min_travel_m`` back along the
trajectory, so the robot never closes a loop with what it just saw. The query runs before the
frame is inserted. Which candidate becomes a loop closure (the proposal, its score against
``score_threshold``, temporal consistency over ``loop_closure.consistency`` frames) is
:class:`vlad_localization.loop_closure.LoopClosureRule`; each frame's :class:`Decision` says what
it made of the frame. With ``loop_closure.sequence_length`` L > 0 the candidates are first ranked
by their sequence similarity over the camera's last L frames (:mod:`vlad_localization.sequence`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlad_localization.config import Config
from vlad_localization.images.frames import NS_PER_S, Pose
from vlad_localization.loop_closure import Decision, LoopClosure, LoopClosureRule
from vlad_localization.mapdb import KeyframeSelector, LiveMap, MapError
from vlad_localization.mapdb.metadata import Keyframe, encode_thumbnail
from vlad_localization.mapdb.patch_store import PATCH_DTYPE
from vlad_localization.mapdb.views import KeyframeView
from vlad_localization.pipeline import PREBUILT, RUN, Candidate, Localizer, QueryResult
from vlad_localization.sequence import QueryHistory, RunTimeline, sequence_scores
from vlad_localization.verification.depth_sources import FrameDepth

FOLLOWED_RUNS = 3  # sequence scoring follows the previous frame's best this-many sequences

# One candidate's fields in every serialisation (replay and query JSON, the node's ~/candidates
# columns after query_stamp and camera), in this order; times in seconds.
CANDIDATE_FIELDS = ("map_id", "map_stamp", "global_similarity", "patch_score", "inliers", "source", "fused_score")


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def candidate_record(c: Candidate) -> dict[str, Any]:
    """One candidate as JSON: :data:`CANDIDATE_FIELDS` (None for no stamp and for the NaN scores
    of a candidate that was not re-ranked) plus ``file``, the keyframe's image or bag topic."""
    return {
        "map_id": int(c.map_id),
        "map_stamp": None if c.stamp_ns is None else c.stamp_ns / NS_PER_S,
        "global_similarity": round(float(c.global_similarity), 6),
        "patch_score": _finite_or_none(c.patch_score),
        "inliers": int(c.inliers),
        "source": int(c.source),
        "fused_score": _finite_or_none(c.fused_score),
        "file": c.file,
        "sequence_similarity": _finite_or_none(c.sequence_similarity),
    }


def candidate_row(c: Candidate) -> tuple[float, ...]:
    """:data:`CANDIDATE_FIELDS` as float64 numbers (NaN for a missing stamp or score)."""
    record = candidate_record(c)
    return tuple(math.nan if record[f] is None else float(record[f]) for f in CANDIDATE_FIELDS)


@dataclass
class FrameResult:
    """What one frame produced: ranked candidates, the loop closure (or None), the id of the
    keyframe inserted into this run's store (or None) and timings (ms)."""

    stamp_ns: int
    camera: int
    candidates: list[Candidate]
    loop_closure: LoopClosure | None
    keyframe: int | None
    timings: dict[str, float]
    query: QueryResult | None = field(default=None, repr=False)
    relative_pose: Any = None  # verification.RelativePose of the loop closure (when verification is enabled)
    decision: Decision = field(default_factory=lambda: Decision("no_candidate"))

    def match_thumbnail(self):
        """The best candidate's thumbnail (RGB) from the map that was queried (even if
        ``~/reload_map`` swapped another in since), or None without a candidate."""
        if not self.candidates or self.query is None:
            return None
        best = self.candidates[0]
        return self.query.store(best).thumbnail(best.map_id)

    def detached(self) -> "FrameResult":
        """A copy to send to another process: without ``query`` (it holds the maps) nor the
        candidates' patch correspondences (kept for verification); every other field as is."""
        copies = {id(c): dataclasses.replace(c, matches=None) if getattr(c, "matches", None) is not None else c
                  for c in self.candidates}
        closure = self.loop_closure
        if closure is not None and id(closure.candidate) in copies:
            closure = dataclasses.replace(closure, candidate=copies[id(closure.candidate)])
        return dataclasses.replace(self, query=None, candidates=[copies[id(c)] for c in self.candidates],
                                   loop_closure=closure)

    def to_record(self) -> dict[str, Any]:
        """The JSON object of ``replay`` (one line per frame)."""
        closure = self.loop_closure
        return {
            "query_stamp": self.stamp_ns / NS_PER_S,
            "camera": self.camera,
            "candidates": [candidate_record(c) for c in self.candidates],
            "loop_closure": [closure.t_query, closure.t_match] if closure else None,
            "loop_closure_match": None if closure is None else {
                "map_id": int(closure.candidate.map_id), "source": int(closure.candidate.source),
                "rank": closure.rank, "score": float(closure.candidate.score)},
            "decision": self.decision.to_json(),
            "keyframe": self.keyframe,
            "relative_pose": None if self.relative_pose is None else self.relative_pose.to_json(),
            "map_pose": None if getattr(self.relative_pose, "map_pose", None) is None
            else self.relative_pose.map_pose.to_json(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


class LoopClosureDetector:
    """Owns the :class:`Localizer`, this run's keyframe store and the acceptance rule.

    Not thread-safe for concurrent :meth:`process` calls (one worker); :meth:`save_map` and
    :meth:`stats` may run beside it (the run's :class:`LiveMap` is safe for that)."""

    def __init__(self, localizer: Localizer, config: Config):
        self.localizer = localizer
        self.rule = LoopClosureRule.from_config(config.loop_closure)
        self.config = config
        lc = config.loop_closure
        if lc.searches_map and localizer.map is None:
            raise ValueError(f"loop_closure.mode {lc.mode!r} needs a prebuilt map (map_path); "
                             "use mode loop_closure to detect loop closures in this run alone")
        if lc.searches_run and localizer.run_map is None:
            localizer.run_map = LiveMap(localizer.encoder.identity(), lc.max_keyframes, lc.eviction,
                                        thumbnails=config.map.store_thumbnails)
        if not lc.searches_map and localizer.map is not None:
            raise ValueError("loop_closure.mode 'loop_closure' searches no prebuilt map: open none")
        self._selectors: dict[int, KeyframeSelector] = {}
        self._travel: dict[int, tuple[float, tuple[float, float, float]]] = {}  # camera -> (metres, last position)
        self.refused = 0  # keyframes not inserted because the store was full (eviction "refuse")
        self._history = QueryHistory(lc.sequence_length) if lc.sequence_length > 0 else None
        self._run_timeline = RunTimeline()  # this run's keyframes in time order, per camera
        self._map_timeline: tuple[object, RunTimeline] | None = None  # (the prebuilt map it describes, its runs)
        self._tracks: dict[int, tuple[int, list]] = {}  # camera -> (stamp, best sequences (source, id, speed))

    @classmethod
    def from_config(cls, config: Config, checkpoint: str | Path, map_path: str | Path | None = None,
                    device: str | None = None) -> "LoopClosureDetector":
        """Load the encoder (and the prebuilt map when the mode searches one)."""
        from vlad_localization.mapdb import MapDatabase
        from vlad_localization.model.encoder import Encoder

        lc = config.loop_closure
        if lc.searches_map and not map_path:
            raise ValueError(f"loop_closure.mode {lc.mode!r} needs a prebuilt map: give its path "
                             "(or use mode loop_closure)")
        encoder = Encoder.from_checkpoint(checkpoint, config.model, device)
        try:
            map_db = None
            if lc.searches_map:
                map_db = MapDatabase.open(map_path, identity=encoder.identity(), map_cfg=config.map)
            return cls(Localizer(encoder, map_db, config), config)
        except BaseException:
            encoder.release()
            raise

    # ------------------------------------------------------------------ state
    @property
    def config(self) -> Config:
        """The configuration; setting it (the node's per-frame parameters) updates the localizer's
        and the acceptance rule's settings too, so they never drift apart."""
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config
        self.localizer.config = config
        self.rule.configure(config.loop_closure)

    @property
    def run_map(self) -> LiveMap | None:
        return self.localizer.run_map

    @property
    def map(self):
        return self.localizer.map

    @property
    def device(self) -> str:
        """The torch device the encoder runs on (``cpu``, ``cuda:0``, ...)."""
        return str(self.localizer.encoder.device)

    def stats(self) -> dict[str, int]:
        """Run-store figures for diagnostics: keyframes, bytes, evicted, refused, full (0/1)."""
        run = self.run_map
        if run is None:
            return {}
        return {"run_keyframes": run.size, "run_bytes": run.nbytes, "run_evicted": run.evicted,
                "run_refused": self.refused, "run_full": int(run.full)}

    def save_map(self, path: str | Path, sources=()) -> Any:
        """Write this run's keyframes as a map directory (atomically; see :meth:`LiveMap.save`)."""
        if self.run_map is None:
            raise MapError("mode 'localize' keeps no keyframes of its own: nothing to save "
                           "(use mode loop_closure or both)")
        return self.run_map.save(path, sources=sources, index=self.config.map.index)

    def reload_map(self, path: str | Path, verify: bool | None = None):
        """Swap in the prebuilt map at ``path`` (:meth:`Localizer.reload_map`): the opened map."""
        return self.localizer.reload_map(path, verify)

    def release(self) -> None:
        self.localizer.release()

    # ------------------------------------------------------------------ per frame
    def process(self, stamp_ns: int, image: np.ndarray, pose: Pose | None = None, camera: int = 0,
                camera_model=None, depth=None, descriptors=None) -> FrameResult:
        """Query with one camera frame, decide the loop closure, insert it as a keyframe of the run
        when the keyframe policy says so. ``image``: RGB uint8 (H, W, 3); ``pose``: the frame's
        pose (odometry interpolated to ``stamp_ns``) or None; ``camera_model``: this camera's
        ``verification.PinholeCamera`` (default: ``verification.intrinsics``); ``depth``: the
        frame's depth image registered to ``image`` (integer: ``verification.depth_scale`` m per
        unit; float: m), or a zero-argument callable computing it (or None), called only when the
        frame becomes a keyframe with a stored view or its loop closure needs the query's depth
        (the keyframe has none); with verification, a keyframe stored with depth gives metric poses.
        ``descriptors``: the image's :class:`Descriptors` when already encoded (with this model), else
        None (encoded here)."""
        t0 = time.perf_counter()
        cfg = self.config
        lc = cfg.loop_closure
        stamp_ns = int(stamp_ns)
        desc = self.localizer.encode(image) if descriptors is None else descriptors
        t1 = time.perf_counter()
        travel = self._travelled(camera, pose)
        max_travel = travel - lc.min_travel_m if travel is not None and lc.min_travel_m > 0 else None
        max_stamp = stamp_ns - round(lc.min_time_gap_s * NS_PER_S)
        rescore, sequence_ms = None, [0.0]
        if self._history is not None:
            self._history.push(camera, stamp_ns, desc.global_desc.detach().float().cpu().numpy()[0])

            def rescore(cands):
                start = time.perf_counter()
                cands = self._sequence_rescore(cands, camera, stamp_ns, max_stamp, max_travel)
                sequence_ms[0] = (time.perf_counter() - start) * 1e3
                return cands
        result = self.localizer.query(desc, max_stamp_ns=max_stamp, max_travel_m=max_travel, rescore=rescore)
        t_rule = time.perf_counter()
        closure, decision = self.rule.decide(stamp_ns, result.candidates, camera)
        t2 = time.perf_counter()
        camera_model = self._camera_model(camera_model)
        frame_depth = FrameDepth(depth)
        relative_pose = None
        if closure is not None and camera_model is not None:
            vcfg = cfg.verification
            relative_pose = self.localizer.verify(result, closure.candidate, image, camera_model,
                                                  frame_depth.at(vcfg.depth_scale, vcfg.max_depth_m), camera)
        t3 = time.perf_counter()
        keyframe = self._insert(stamp_ns, image, pose, camera, desc, travel, camera_model, frame_depth) \
            if lc.searches_run else None
        timings = dict(result.timings, encode_ms=(t1 - t0) * 1e3, sequence_ms=sequence_ms[0],
                       decide_ms=(t2 - t_rule) * 1e3, verify_ms=(t3 - t2) * 1e3,
                       insert_ms=(time.perf_counter() - t3) * 1e3, total_ms=(time.perf_counter() - t0) * 1e3)
        result.query_rgb_size = tuple(np.asarray(image).shape[:2])
        return FrameResult(stamp_ns, camera, result.candidates, closure, keyframe, timings, result, relative_pose,
                           decision)

    def _sequence_rescore(self, cands: list[Candidate], camera: int, stamp_ns: int, max_stamp_ns: int,
                          max_travel_m: float | None = None) -> list[Candidate]:
        """The candidates with their ``sequence_similarity`` from the camera's last frames
        (:func:`~vlad_localization.sequence.sequence_scores`), plus the keyframes the previous frame's
        best sequences lead to at their speeds when the search missed them (a matched run is followed
        while the global similarity alone does not find it); a candidate outside any run keeps its
        global similarity as its single term."""
        ages, history = self._history.frames(camera)
        lc = self.config.loop_closure
        cands = cands + self._followed(cands, camera, stamp_ns, max_stamp_ns, max_travel_m, history[0])
        if lc.sequence_contrast_window > 0:
            cands = cands + self._standing_out(cands, history[0], max_stamp_ns, max_travel_m)
        speeds = lc.sequence_speeds
        by_group: dict[tuple, list[tuple[Candidate, int]]] = {}
        for c in cands:
            timeline, _ = self._timeline(c.source)
            where = timeline.locate(c.map_id) if c.stamp_ns is not None else None
            if where is None:
                c.sequence_similarity = c.global_similarity
            else:
                by_group.setdefault((c.source, where[0]), []).append((c, where[1]))
        best: list[tuple[float, int, int, float]] = []  # (S, source, map id, speed)
        for (source, group), members in by_group.items():
            timeline, store = self._timeline(source)
            stamps, ids = timeline.group(group)
            usable = self._usable(source, stamps, ids, max_stamp_ns)

            def similarity(rows, cols, ids=ids, store=store):
                unique, inverse = np.unique(ids[cols], return_inverse=True)
                table = history @ store.descriptors(unique).T  # (frames, keyframes): one product, no gather
                return table[rows, inverse.reshape(-1)]

            scores, speed = sequence_scores(similarity, np.array([pos for _, pos in members]), stamps, ages, speeds,
                                            usable, lc.sequence_contrast_window)
            for (c, _), value, v in zip(members, scores, speed):
                c.sequence_similarity = float(value)
                best.append((float(value), source, c.map_id, float(v)))
        best.sort(reverse=True)
        self._tracks[camera] = (stamp_ns, [b[1:] for b in best[:FOLLOWED_RUNS]])
        return cands

    def _followed(self, cands: list[Candidate], camera: int, stamp_ns: int, max_stamp_ns: int,
                  max_travel_m: float | None, query) -> list[Candidate]:
        """Candidates where the previous frame's best sequences lead now (each run advanced by its
        speed times the time since), that are not among ``cands`` and that the search could return."""
        from vlad_localization.pipeline import candidate_from_keyframe

        previous = self._tracks.get(camera)
        if previous is None:
            return []
        had = {(c.source, c.map_id) for c in cands}
        out = []
        for source, map_id, speed in previous[1]:
            timeline, store = self._timeline(source)
            where = timeline.locate(map_id)
            if where is None or store is None:
                continue
            stamps, ids = timeline.group(where[0])
            target = stamps[where[1]] + speed * (stamp_ns - previous[0])
            usable = self._usable(source, stamps, ids, max_stamp_ns)
            pos = int(np.clip(np.searchsorted(stamps, target), 0, len(stamps) - 1))
            pos = min((p for p in (pos - 1, pos) if 0 <= p < len(stamps) and (usable is None or usable[p])),
                      key=lambda p: abs(stamps[p] - target), default=None)
            if pos is None or (source, int(ids[pos])) in had:
                continue
            had.add((source, int(ids[pos])))
            keyframe = store.keyframes([int(ids[pos])])[0]
            if source == RUN and max_travel_m is not None and keyframe.extra.get("travel_m", 0.0) > max_travel_m:
                continue
            similarity = float(store.descriptors([ids[pos]])[0] @ query)
            out.append(candidate_from_keyframe(keyframe, similarity, source))
        return out

    def _standing_out(self, cands: list[Candidate], query: np.ndarray, max_stamp_ns: int,
                      max_travel_m: float | None) -> list[Candidate]:
        """The ``localizer.top_k`` keyframes of each searched store whose similarity to the frame stands
        out most from their neighbours along their run (:func:`~vlad_localization.sequence.run_contrast`),
        that are not among ``cands``: under a change of season or light every place of the other
        condition looks alike, and the global top-k misses the right one."""
        from vlad_localization.pipeline import candidate_from_keyframe
        from vlad_localization.sequence import run_contrast

        window, k = self.config.loop_closure.sequence_contrast_window, self.config.localizer.top_k
        had = {(c.source, c.map_id) for c in cands}
        out = []
        for source, store in ((PREBUILT, self.map), (RUN, self.run_map)):
            if store is None or store.manifest is None:
                continue
            limits = {"max_stamp_ns": max_stamp_ns, "max_travel_m": max_travel_m} if source == RUN else {}
            ids, sims = store.similarities(query, **limits)
            if not len(ids):
                continue
            row = np.full(int(ids.max()) + 1, np.nan)
            row[ids] = sims
            timeline, _ = self._timeline(source)
            scored = []
            for group in timeline.groups():
                _, members = timeline.group(group)
                members = members[members < len(row)]
                values = row[members]
                z = run_contrast(np.nan_to_num(values), ~np.isnan(values), window)
                top = np.argpartition(-z, k)[:k] if len(z) > k else np.arange(len(z))
                scored += [(float(z[i]), int(members[i])) for i in top if np.isfinite(z[i])]
            for _, map_id in sorted(scored, reverse=True)[:k]:
                if (source, map_id) not in had:
                    had.add((source, map_id))
                    out.append(candidate_from_keyframe(store.keyframes([map_id])[0], float(row[map_id]), source))
        return out

    def _usable(self, source: int, stamps: np.ndarray, ids: np.ndarray, max_stamp_ns: int) -> np.ndarray | None:
        """Which keyframes of a run the search could return now (None: all; this run's: old enough, kept)."""
        return (stamps <= max_stamp_ns) & (ids >= self._run_timeline.first_id) if source == RUN else None

    def _timeline(self, source: int) -> tuple[RunTimeline, Any]:
        """(the runs of a store in time order, the store) for ``source``; the prebuilt map's is read
        once per map (again after a reload)."""
        if source == RUN:
            return self._run_timeline, self.run_map
        db = self.map
        if self._map_timeline is None or self._map_timeline[0] is not db:
            self._map_timeline = (db, RunTimeline.of(db.all_keyframes()))
        return self._map_timeline[1], db

    def _camera_model(self, given):
        """The camera model verification uses, or None when verification is off or has none."""
        vcfg = self.config.verification
        if not vcfg.enabled:
            return None
        if given is None and vcfg.intrinsics is not None:
            from vlad_localization.verification import PinholeCamera

            given = PinholeCamera.from_list(vcfg.intrinsics)
        return given

    def _travelled(self, camera: int, pose: Pose | None) -> float | None:
        """Distance travelled by this camera so far (m), or None while it has no pose."""
        if pose is None:
            return self._travel[camera][0] if camera in self._travel else None
        position = tuple(float(v) for v in pose.position)
        metres, last = self._travel.get(camera, (0.0, position))
        metres += math.dist(position, last)
        self._travel[camera] = (metres, position)
        return metres

    def _insert(self, stamp_ns: int, image, pose: Pose | None, camera: int, desc, travel, camera_model,
                depth: FrameDepth) -> int | None:
        selector = self._selectors.get(camera)
        if selector is None:
            selector = self._selectors[camera] = KeyframeSelector.from_config(self.config.map)
        position = None if pose is None else tuple(pose.position)
        global_desc, patches = desc.numpy()
        if not (selector.prefilter(stamp_ns, position) and selector.accept(stamp_ns, position, global_desc[0])):
            return None
        extra: dict[str, Any] = {"camera": camera}
        if travel is not None:
            extra["travel_m"] = travel
        keyframe = Keyframe(id=-1, stamp_ns=stamp_ns, frame_id=f"camera{camera}", source=f"run:camera{camera}",
                            position=position, orientation=None if pose is None else tuple(pose.orientation),
                            extra=extra)
        map_cfg = self.config.map
        thumb = encode_thumbnail(image, map_cfg.thumbnail_width) if map_cfg.store_thumbnails else None
        view = None
        if camera_model is not None:  # for verifying a closure with this keyframe
            view = KeyframeView.capture(image, camera_model, depth.image() if map_cfg.store_views else None,
                                        map_cfg.store_views, self.config.verification.depth_scale)
        new_id = self.run_map.add(global_desc[0], {p: a[0].astype(PATCH_DTYPE) for p, a in patches.items()},
                                  keyframe, thumb, grid=desc.grid, image_size=desc.image_size, view=view)
        if new_id is None:
            self.refused += 1
        else:
            self._run_timeline.add(new_id, stamp_ns, (0, keyframe.frame_id))
            if self.run_map.evicted:
                self._run_timeline.forget_before(int(self.run_map.live_ids()[0]))
        return new_id


__all__ = ["CANDIDATE_FIELDS", "FrameResult", "LoopClosureDetector", "candidate_record", "candidate_row"]
