"""Calibrating the loop-closure acceptance on the user's own revisits (``vlad-localization calibrate``).

From evaluation records (:mod:`vlad_localization.evaluation`: one pass over held-out queries with
ground truth) it refits the fused score's coefficients (:mod:`vlad_localization.fusion_fit`), chooses
``loop_closure.score_threshold``: the lowest threshold on the fused top-1 score whose accepted
proposals reach the stated precision (so the most recall at that precision), and writes both as a
config YAML on top of the preset.

The records come from a map and query images with ground truth (``evaluate``'s pass), or from runs
with poses (:func:`run_records`: the readers and place pairs of :mod:`vlad_localization.training`;
what ``train`` calibrates on at its end, its validation places).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml

from vlad_localization import evaluation as ev

CONSISTENCY_KEYS = ("consistency", "consistency_window_s", "consistency_window_m")  # what the threshold assumes


@dataclass
class Calibration:
    """The chosen threshold (None: no threshold reaches the precision) and what it gives on the data."""

    fusion_model: dict
    score_threshold: float | None
    precision: float
    recall: float
    n_queries: int
    n_queries_with_match: int
    refit: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def acceptance_curve(records: Sequence[ev.QueryRecord], model: Mapping[str, float], lc=None, keyframes=None) -> list:
    """[threshold, precision, recall] rows of the node's acceptance rule over the queries
    (:func:`vlad_localization.evaluation.loop_closure_report`, what ``evaluate`` reports)."""
    return ev.loop_closure_report(records, model, lc, keyframes)["curve"]


def at_threshold(curve: Sequence[Sequence[float]], threshold: float) -> tuple[float, float]:
    """(precision, recall) of accepting at ``threshold``: the curve's row of the lowest score >= it."""
    rows = [row for row in curve if row[0] >= threshold]
    return (rows[0][1], rows[0][2]) if rows else (1.0, 0.0)


def calibrate(records: Sequence[ev.QueryRecord], model: Mapping[str, float], precision: float, lc=None,
              keyframes=None, refit: bool = True) -> Calibration:
    """The fused model refitted on ``records`` (:func:`vlad_localization.fusion_fit.fit`; ``refit=False``
    keeps ``model``) and the lowest threshold whose acceptances (the node's rule with ``lc``'s
    consistency) reach ``precision`` on them: the most recall at that precision."""
    from vlad_localization import fusion_fit

    if not 0 < precision <= 1:
        raise ValueError(f"--precision must be in (0, 1], got {precision}")
    if refit:  # the single-frame model; the sequence groups (fitted on runs) are kept
        model = {**model, **fusion_fit.fit({"calibration": records})}
    rows = [row for row in acceptance_curve(records, model, lc, keyframes) if row[1] >= precision and row[2] > 0]
    threshold, got, recall = max(rows, key=lambda row: (row[2], -row[0])) if rows else (None, 1.0, 0.0)
    return Calibration(dict(model), threshold, got, recall, len(records), sum(bool(r.positives) for r in records),
                       refit=refit)


def config_yaml(config: str, calibration: Calibration, note: str, lc=None) -> str:
    """A config YAML: ``config`` (a preset as ``base:``, or a YAML file's own content) with
    ``matching.fusion_model`` and ``loop_closure.score_threshold`` from ``calibration`` (and ``lc``'s
    consistency settings, which the threshold was chosen with)."""
    from vlad_localization.config import PRESETS

    if config in PRESETS:
        data: dict = {"base": config}
    else:
        data = yaml.safe_load(Path(config).read_text()) or {}
    data.setdefault("matching", {})["fusion_model"] = {k: float(v) for k, v in calibration.fusion_model.items()}
    closure = data.setdefault("loop_closure", {})
    closure["score_threshold"] = float(calibration.score_threshold)
    if lc is not None:
        closure.update({key: getattr(lc, key) for key in CONSISTENCY_KEYS})
    return f"# {note}\n" + yaml.safe_dump(data, sort_keys=False)


@dataclass(frozen=True)
class CalibrationRequest:
    """How ``train`` calibrates its checkpoint at its end: the full ``config`` (its evaluation
    config is derived), the ``base`` the YAML is written on (``--config``: a preset name or a YAML
    path), the precision to reach and whether the fused model is refitted."""

    config: object
    base: str
    precision: float = 0.99
    refit: bool = True


def calibrate_runs(checkpoint: str | Path, data, criteria, request: CalibrationRequest, device: str | None = None,
                   progress: bool = True, work: str | Path | None = None) -> Calibration:
    """:func:`calibrate` on the records of runs with poses (:func:`run_records`)."""
    config = ev.evaluation_config(request.config)
    records, keyframes = run_records(checkpoint, data, config, criteria, device, progress, work)
    return calibrate(records, config.matching.fusion_model, request.precision, config.loop_closure, keyframes,
                     request.refit)


def run_records(checkpoint: str | Path, data, config, criteria, device: str | None = None, progress: bool = True,
                work: str | Path | None = None) -> tuple[list[ev.QueryRecord], list]:
    """(records, map keyframes) of one evaluate pass over runs with poses (``data``: a
    :class:`~vlad_localization.training.TrainingFrames`): every frame is a query against a map of all
    of them (built in a temporary folder under ``work``), leaving out itself and the frames of its run
    closer in time than ``criteria.min_gap_s`` (:func:`~vlad_localization.training.mining.trivially_similar`,
    as the node's time gap); its true matches are its positives
    (:func:`~vlad_localization.training.place_pairs`: within ``positive_m``, and ``positive_deg``).
    A frame with none is kept: accepting its top-1 is a false closure. ``config`` is the evaluation
    config (:func:`vlad_localization.evaluation.evaluation_config`)."""
    from vlad_localization.config import apply_overrides
    from vlad_localization.mapdb import MapDatabase, build_map
    from vlad_localization.model.encoder import Encoder
    from vlad_localization.pipeline import Localizer
    from vlad_localization.training import TrainingDataError, place_pairs
    from vlad_localization.training.mining import trivially_similar

    pairs = place_pairs(data, criteria)
    if not len(pairs.queries):
        raise TrainingDataError("no two frames show the same place (within --positive-m, of different runs or "
                                f"more than --min-gap-s {criteria.min_gap_s:g} s apart): give revisits")
    every_frame = {"map.min_time_gap_s": 0.0, "map.min_distance_m": 0.0, "map.min_descriptor_change": 0.0,
                   "map.store_views": False, "map.store_thumbnails": False, "map.index": "Flat"}
    config = apply_overrides(config, every_frame, where="calibrate")
    encoder = Encoder.from_checkpoint(checkpoint, config.model, device)
    if work is not None:
        Path(work).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="calibration_map_", dir=work) as tmp:
        try:
            built = build_map(Path(tmp) / "map", data.frames, encoder, config, progress=progress, total=len(data))
            if built.keyframes != len(data):
                raise TrainingDataError(f"only {built.keyframes} of {len(data)} frames could be read "
                                        f"({built.skipped}): fix or remove the unreadable images")
            exclude = [np.flatnonzero(trivially_similar(data, i, criteria.min_gap_s)) for i in range(len(data))]
            with MapDatabase.open(Path(tmp) / "map", identity=encoder.identity()) as db:
                records = ev.evaluate_queries(Localizer(encoder, db, config), data.frames,
                                              [set(p.tolist()) for p in pairs.positives], progress, exclude)
                keyframes = db.keyframes(list(range(db.size)))
        finally:
            encoder.release()
    return records, keyframes


def config_path_beside(checkpoint: str | Path) -> Path:
    """``DIR/NAME.yaml`` for a checkpoint ``DIR/NAME.pth.tar`` (or ``.pth`` / ``.tar``)."""
    path = Path(checkpoint)
    name = path.name
    for suffix in (".tar", ".pth"):
        name = name.removesuffix(suffix)
    return path.with_name(name + ".yaml")


def write_config(path: str | Path, config: str, calibration: Calibration, note: str, lc=None) -> Path:
    """Write :func:`config_yaml` to ``path`` (its folder created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(config, calibration, note, lc))
    return path


def summary_line(calibration: Calibration) -> str:
    """What ``calibrate`` prints: the threshold and the precision and recall it keeps."""
    return (f"loop_closure.score_threshold {calibration.score_threshold}: precision {calibration.precision:.4f}, "
            f"recall {calibration.recall:.4f} on {calibration.n_queries} queries ({calibration.n_queries_with_match} "
            "with a true match)" + ("" if calibration.refit else ", fused model kept"))
