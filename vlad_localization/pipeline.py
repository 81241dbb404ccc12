"""The query pipeline: encode an image, search the map's global index, re-rank by patch matching.

    loc = Localizer.from_paths("maps/run1", "model.pth.tar", load_config("speed"))
    res = loc.query(rgb)                    # RGB uint8 (H, W, 3), or Descriptors of one image
    best = res.candidates[0]                # final rank order
    best.map_id, best.patch_score, best.pose

A query searches the prebuilt map (``source`` 0) and, when one is given, the run's own keyframes
(:class:`~vlad_localization.mapdb.LiveMap`, ``source`` 1; see :mod:`vlad_localization.detector`);
the candidates of both are merged by global similarity and re-ranked together.

``Candidate.patch_score`` is the absolute fused patch score in [0, 1] (thresholdable); it is NaN
for candidates that were not re-ranked (``localizer.rerank`` False, or ranked below
``localizer.rerank_k``), which always come after the re-ranked ones in global-similarity order.
Keypoints are (x, y) pixels of the *network input* (``QueryResult.network_size``); use
:func:`scale_keypoints` to draw them on the original image or a thumbnail.

:meth:`Localizer.verify` turns a re-ranked candidate into a relative pose
(:mod:`vlad_localization.verification`) with the keyframe's stored view (camera model, image,
depth) when its map has one, else from the patch keypoints alone; against a prebuilt map keyframe
with a pose, the pose carries the robot's pose in the map (``map_pose``,
:mod:`vlad_localization.verification.map_pose`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlad_localization.config import Config
from vlad_localization.images.frames import Pose
from vlad_localization.loop_closure import score_of
from vlad_localization.mapdb import Keyframe, MapDatabase
from vlad_localization.model.descriptors import Descriptors


PREBUILT, RUN = 0, 1  # Candidate.source: the prebuilt map, this run's own keyframes


@dataclass
class Candidate:
    """One map keyframe proposed for a query (see the module doc for NaN ``patch_score``)."""

    map_id: int
    stamp_ns: int | None
    frame_id: str
    file: str  # the keyframe's image file, or bag:topic (the map's ``source`` column)
    pose: Pose | None
    global_similarity: float
    patch_score: float = math.nan
    per_size: dict[int, float] = field(default_factory=dict)
    inliers: int = 0
    fused_score: float = math.nan  # estimated probability of the same place ([0, 1]); NaN when not computed
    query_keypoints: np.ndarray | None = None  # (M, 2) x, y in network-input pixels
    map_keypoints: np.ndarray | None = None
    source: int = PREBUILT  # which map: PREBUILT (0) or RUN (1, this run's own keyframes)
    matches: tuple | None = None  # (patch sizes, Correspondences per size) of the re-ranking, for verification
    run: int = 0  # the keyframe's run in its map (with frame_id: the sequence it belongs to)
    sequence_similarity: float = math.nan  # sequence scoring's S (vlad_localization.sequence); NaN when off
    evidence: dict[str, float] = field(default_factory=dict)  # fused: each matcher's absolute score (spatial, ransac)
    camera: int | None = None  # the camera index that took the keyframe, when its map records it (a saved run's)

    @property
    def reranked(self) -> bool:
        return not math.isnan(self.patch_score)

    @property
    def ranking_similarity(self) -> float:
        """What the search's candidates are ordered by before re-ranking: the sequence similarity when
        sequence scoring computed one, else the global similarity."""
        return self.global_similarity if math.isnan(self.sequence_similarity) else self.sequence_similarity

    @property
    def score(self) -> float:
        """What ``loop_closure.score_threshold`` is compared with: the fused score when computed,
        else the absolute patch score (NaN when not re-ranked: never a loop closure)."""
        return score_of(self.patch_score, self.fused_score)


@dataclass
class QueryResult:
    candidates: list[Candidate]
    timings: dict[str, float]  # encode_ms, search_ms, rerank_ms
    query_rgb_size: tuple[int, int] | None  # (H, W) of the query image; None for Descriptors input
    network_size: tuple[int, int]  # (H, W) the keypoints refer to
    map: MapDatabase | None = None  # the prebuilt map queried (map_ids refer to it, also after a reload)
    run_map: object | None = None  # the run's LiveMap queried, if any

    def store(self, candidate: Candidate):
        """The map a candidate's ``map_id`` refers to (for its thumbnail, patches, keyframe)."""
        return self.run_map if candidate.source == RUN else self.map


def scale_keypoints(points: np.ndarray, from_hw, to_hw) -> np.ndarray:
    """(x, y) points from an image of size ``from_hw`` to one of ``to_hw`` (both (H, W))."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.asarray(points, np.float64) * np.array([sx, sy])


class Localizer:
    """Encoder + map database(s) + patch matcher. Thread-safe for one querying thread plus
    :meth:`reload_map` from another (the swap is a single reference assignment).

    ``map_db`` is the prebuilt map (None in ``loop_closure`` mode); ``run_map`` this run's
    :class:`~vlad_localization.mapdb.LiveMap` (None in ``localize`` mode)."""

    def __init__(self, encoder, map_db: MapDatabase | None, config: Config, run_map=None):
        self.encoder = encoder
        self.config = config
        self._map = map_db
        self.run_map = run_map
        self._matcher = None
        self._matcher_key = None

    @classmethod
    def from_paths(cls, map_path: str | Path, checkpoint: str | Path, config: Config,
                   device: str | None = None) -> "Localizer":
        """Load the encoder from ``checkpoint`` and open the map, refusing a model mismatch."""
        from vlad_localization.model.encoder import Encoder

        encoder = Encoder.from_checkpoint(checkpoint, config.model, device)
        try:
            map_db = MapDatabase.open(map_path, identity=encoder.identity(), map_cfg=config.map)
        except BaseException:
            encoder.release()
            raise
        return cls(encoder, map_db, config)

    @property
    def map(self) -> MapDatabase | None:
        return self._map

    def reload_map(self, path: str | Path | None = None, verify: bool | None = None) -> MapDatabase:
        """Reopen the map (after a rebuild/append swapped it in) or open another one (``verify``:
        every byte against its sha256; default ``map.verify_on_open``). On failure the current map
        stays in use and the :class:`MapError` propagates."""
        if path is None and self._map is None:
            raise ValueError("no prebuilt map to reload: give a map path")
        new = MapDatabase.open(path or self._map.path, identity=self.encoder.identity(), map_cfg=self.config.map,
                               verify=verify)
        self._map = new  # the old one is closed when the last query using it finishes (GC)
        return new

    def release(self) -> None:
        """Free accelerator memory held by the encoder."""
        self.encoder.release()

    # ------------------------------------------------------------------ querying
    def encode(self, image: np.ndarray) -> Descriptors:
        """Descriptors of one RGB uint8 image (size-checked against ``localizer.max_image_pixels``)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"query image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        limit = self.config.localizer.max_image_pixels
        if image.shape[0] * image.shape[1] > limit:
            raise ValueError(f"query image {image.shape[1]}x{image.shape[0]} exceeds localizer.max_image_pixels={limit}")
        return self.encoder.encode([image])

    def query(self, image_or_descriptors, k: int | None = None, max_stamp_ns: int | None = None,
              max_travel_m: float | None = None, rescore=None) -> QueryResult:
        """Top-``k`` (default ``localizer.top_k``) keyframes for one image, best first, from the
        prebuilt map and the run's store; ``max_stamp_ns`` / ``max_travel_m`` restrict the run's
        store to keyframes taken before that time / travelled distance (never its recent ones).
        ``rescore(candidates) -> candidates``, when given, sets their ``sequence_similarity`` (and may
        add candidates) before they are ordered by :attr:`Candidate.ranking_similarity` and re-ranked
        (sequence scoring)."""
        db, run = self._map, self.run_map
        timings = {"encode_ms": 0.0, "search_ms": 0.0, "rerank_ms": 0.0}
        t0 = time.perf_counter()
        if isinstance(image_or_descriptors, Descriptors):
            desc, rgb_size = image_or_descriptors, None
            if len(desc) != 1:
                raise ValueError(f"query takes the descriptors of one image, got {len(desc)}")
        else:
            desc = self.encode(image_or_descriptors)
            rgb_size = tuple(np.asarray(image_or_descriptors).shape[:2])
        t1 = time.perf_counter()
        timings["encode_ms"] = (t1 - t0) * 1e3 if rgb_size is not None else 0.0
        query = desc.global_desc.detach().float().cpu().numpy()
        if not np.isfinite(query).all():  # what a search or a score would make of it is meaningless
            raise ValueError("the query's global descriptor has NaN/inf values (fp16 overflow? a corrupt checkpoint?)")
        k = int(k or self.config.localizer.top_k)
        cands: list[Candidate] = []
        for source, store, limits in ((PREBUILT, db, {}),
                                      (RUN, run, {"max_stamp_ns": max_stamp_ns, "max_travel_m": max_travel_m})):
            if store is None or store.manifest is None:  # not searched, or a run store still empty
                continue
            _check_layout(desc, store)
            sims, ids = store.search(query, k, **limits)
            keep = ids[0] >= 0
            for kf, sim in zip(store.keyframes(ids[0][keep]), sims[0][keep]):
                cands.append(candidate_from_keyframe(kf, float(sim), source))
        cands = sorted(cands, key=lambda c: -c.global_similarity)[:k]  # stable: the prebuilt map first on ties
        if rescore is not None and cands:
            cands = sorted(rescore(cands), key=lambda c: -c.ranking_similarity)
        t2 = time.perf_counter()
        timings["search_ms"] = (t2 - t1) * 1e3
        network_size = tuple(desc.image_size)
        if self.config.localizer.rerank and cands:
            cands = self._rerank({PREBUILT: db, RUN: run}, desc, cands)
            timings["rerank_ms"] = (time.perf_counter() - t2) * 1e3
        return QueryResult(cands, timings, rgb_size, network_size, db, run)

    def verify(self, result: QueryResult, candidate: Candidate, image: np.ndarray, camera, depth=None,
               camera_index: int = 0):
        """The relative pose of a re-ranked ``candidate`` of ``result`` (query ``image`` RGB of
        ``camera``, a ``verification.PinholeCamera``; ``depth`` the query's depth source, raw pixels
        -> metres, used when the keyframe has none): a
        :class:`~vlad_localization.verification.RelativePose` or its rejection. A verified candidate of
        the prebuilt map whose keyframe has a pose also gets ``map_pose``: the robot's pose in the map
        (:func:`map_pose <vlad_localization.verification.map_pose.map_pose_of>`, with the
        ``verification.camera_to_base`` extrinsic of ``camera_index`` and of the keyframe's camera).

        With the keyframe's stored view (format version 3 maps, this run's keyframes), its image
        (SIFT refinement, ``verification.refine``), camera model and depth (metric PnP); a keyframe
        stored without its image is verified from the patch keypoints alone with its camera model,
        one with no view at all (a version 1 or 2 map) with the query's camera model for both
        (``refine`` ``none``, ``match_camera`` ``query``: coarse, see docs/verification.md)."""
        from vlad_localization.verification import RelativePose, View, verify_correspondences

        if candidate.matches is None:  # not re-ranked: no patch matches to start from
            return RelativePose.rejected("no_features")
        vcfg = self.config.verification
        store = result.store(candidate)
        try:
            stored = None if store is None else store.view(candidate.map_id)
        except KeyError:  # a run keyframe evicted meanwhile
            stored = None
        query = View(camera, tuple(np.asarray(image).shape[:2]), image, depth)
        match = View(camera, query.image_hw) if stored is None else stored.verification_view(vcfg.max_depth_m)
        refine = vcfg.refine if match.can_refine else "none"
        pose = verify_correspondences(*candidate.matches, result.network_size, query, match, vcfg,
                                      self.encoder.geometry.stride, refine=refine)
        pose.match_camera = "query" if stored is None else "map"
        if candidate.source == PREBUILT:  # this run's keyframes have poses in this run's odometry frame
            pose.map_pose = self.map_pose(pose, candidate, camera_index)
        return pose

    def map_pose(self, pose, candidate: Candidate, camera_index: int = 0):
        """The robot's pose in the map from a verified relative ``pose`` to ``candidate`` (None when
        rejected or the keyframe has no pose); the keyframe's camera is ``candidate.camera`` when its
        map records it, else the query's (one robot, one camera rig)."""
        from vlad_localization.verification.map_pose import camera_to_base, map_pose_of

        if pose is None or not pose.ok or candidate.pose is None:
            return None
        vcfg = self.config.verification
        keyframe_camera = camera_index if candidate.camera is None else candidate.camera
        return map_pose_of(pose, candidate.pose, camera_to_base(vcfg.camera_to_base, keyframe_camera),
                           camera_to_base(vcfg.camera_to_base, camera_index), vcfg.monocular_baseline_m)

    def _rerank(self, stores: dict, desc: Descriptors, cands: list[Candidate]) -> list[Candidate]:
        n = min(len(cands), max(1, int(self.config.localizer.rerank_k)))
        head, tail = cands[:n], cands[n:]
        res = self.match_candidates(stores, desc, head)
        for i, c in enumerate(head):
            c.patch_score = float(res.fused[i])
            c.fused_score = math.nan if res.probability is None else float(res.probability[i])
            c.evidence = {} if res.evidence is None else {name: float(v[i]) for name, v in res.evidence.items()}
            c.per_size = {int(p): float(res.per_size[i, s]) for s, p in enumerate(res.patch_sizes)}
            best = int(np.argmax(res.per_size[i]))
            c.inliers = int(res.inliers[i, best])
            corr = res.correspondences[i][best]
            c.query_keypoints = np.asarray(corr.query_keypoints, np.float64).reshape(-1, 2)
            c.map_keypoints = np.asarray(corr.candidate_keypoints, np.float64).reshape(-1, 2)
            c.matches = (tuple(res.patch_sizes), list(res.correspondences[i]))
        return [head[i] for i in res.order] + tail

    def match_candidates(self, maps, desc: Descriptors, cands: list[Candidate]):
        """The :class:`~vlad_localization.matching.MatchResult` of the query's patch descriptors
        against the candidates' stored ones (in the order given), with the configured matcher and
        fusion (``fused``: both matchers' evidence and P(same place)). ``maps``: the map the
        candidates come from, or ``{source: map}`` when they come from the prebuilt map and the run."""
        stores = maps if isinstance(maps, dict) else {PREBUILT: maps, RUN: maps}
        matcher = self._matcher_for(stores[cands[0].source])
        device = next(iter(desc.patches.values())).device
        stored = _patches_of(stores, cands)
        cand_patches = {p: torch.from_numpy(a.astype(np.float32)).to(device) for p, a in stored.items()}
        query_patches = {p: t[0].float() for p, t in desc.patches.items()}
        sequence = np.array([c.sequence_similarity for c in cands])
        return matcher.score(query_patches, cand_patches, np.array([c.global_similarity for c in cands]),
                             sequence if np.isfinite(sequence).all() else None,
                             self.config.loop_closure.sequence_contrast_window > 0)

    def _matcher_for(self, db: MapDatabase):
        from vlad_localization.matching.matcher import PatchMatcher

        m = db.manifest
        key = (tuple(m.grid), tuple(m.image_size), tuple(m.model["patch_sizes"]), tuple(m.model["strides"]))
        if self._matcher_key != key:
            self._matcher = PatchMatcher(self.config.matching, m.model["patch_sizes"], m.model["strides"],
                                         self.encoder.geometry, m.grid, m.image_size)
            self._matcher_key = key
        return self._matcher


def _check_layout(desc: Descriptors, store) -> None:
    m = store.manifest
    if tuple(desc.grid) != tuple(m.grid) or tuple(desc.image_size) != tuple(m.image_size):
        where = getattr(store, "path", None) or "this run's keyframes"
        raise ValueError(
            f"query encoded at {desc.image_size} (grid {desc.grid}) but map {where} at "
            f"{tuple(m.image_size)} (grid {tuple(m.grid)}): use the model config the map was built with"
        )


def _patches_of(stores: dict, cands: list[Candidate]) -> dict[int, np.ndarray]:
    """{patch size: (len(cands), patches, D)} in the candidates' order, read from each one's map."""
    rows: dict[int, list[int]] = {}
    for i, c in enumerate(cands):
        rows.setdefault(c.source, []).append(i)
    out: dict[int, np.ndarray] = {}
    for source, positions in rows.items():
        part = stores[source].patches([cands[i].map_id for i in positions])
        for p, a in part.items():
            if p not in out:
                out[p] = np.empty((len(cands),) + a.shape[1:], a.dtype)
            out[p][positions] = a
    return out


def candidate_from_keyframe(kf: Keyframe, similarity: float, source: int = PREBUILT) -> Candidate:
    pose = None
    if kf.position is not None:
        pose = Pose(tuple(kf.position), tuple(kf.orientation) if kf.orientation else (0.0, 0.0, 0.0, 1.0))
    camera = kf.extra.get("camera") if isinstance(kf.extra, dict) else None
    return Candidate(kf.id, kf.stamp_ns, kf.frame_id, kf.source, pose, similarity, source=source, run=kf.run,
                     camera=camera if isinstance(camera, int) else None)


__all__ = ["PREBUILT", "RUN", "Candidate", "Localizer", "QueryResult", "candidate_from_keyframe", "scale_keypoints"]
