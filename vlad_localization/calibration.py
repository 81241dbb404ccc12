"""Calibrating the loop-closure acceptance on the user's own revisits (``vlad-localization calibrate``).

From evaluation records (:mod:`vlad_localization.evaluation`: one pass over held-out queries with
ground truth) it refits the fused score's coefficients (:mod:`vlad_localization.fusion_fit`), chooses
``loop_closure.score_threshold``: the lowest threshold on the fused top-1 score whose accepted
proposals reach the stated precision (so the most recall at that precision), and writes both as a
config YAML on top of the preset.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

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
