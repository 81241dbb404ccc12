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

import numpy as np
import yaml

from vlad_localization import evaluation as ev


@dataclass
class Calibration:
    """The chosen threshold (None: no threshold reaches the precision) and what it gives on the data."""

    fusion_model: dict
    score_threshold: float | None
    precision: float
    recall: float
    accepted: int
    n_queries: int
    n_queries_with_match: int
    refit: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def acceptance(records: Sequence[ev.QueryRecord], model: Mapping[str, float], threshold: float) -> tuple[float, float, int]:
    """(precision, recall, accepted) of accepting each query's fused top-1 when its score >= threshold."""
    scores, correct, num_positive = ev.top1_scores(records, model)
    accepted = scores >= threshold
    n = int(accepted.sum())
    tp = int(np.sum(accepted & correct))
    return (tp / n if n else 1.0), (tp / num_positive if num_positive else 0.0), n


def calibrate(records: Sequence[ev.QueryRecord], model: Mapping[str, float], precision: float,
              refit: bool = True) -> Calibration:
    """The fused model refitted on ``records`` (:func:`vlad_localization.fusion_fit.fit`; ``refit=False``
    keeps ``model``), the threshold for ``precision`` (:func:`~vlad_localization.fusion_fit.threshold_at_precision`)
    and what that threshold gives on ``records``."""
    from vlad_localization import fusion_fit

    if not 0 < precision <= 1:
        raise ValueError(f"--precision must be in (0, 1], got {precision}")
    if refit:
        model = fusion_fit.fit({"calibration": records})
    threshold, _ = fusion_fit.threshold_at_precision({"calibration": records}, model, precision)
    got, recall, accepted = acceptance(records, model, threshold) if threshold is not None else (1.0, 0.0, 0)
    return Calibration(dict(model), threshold, got, recall, accepted, len(records),
                       sum(bool(r.positives) for r in records), refit=refit)


def config_yaml(config: str, calibration: Calibration, note: str) -> str:
    """A config YAML: ``config`` (a preset as ``base:``, or a YAML file's own content) with
    ``matching.fusion_model`` and ``loop_closure.score_threshold`` from ``calibration``."""
    from vlad_localization.config import PRESETS

    if config in PRESETS:
        data: dict = {"base": config}
    else:
        data = yaml.safe_load(Path(config).read_text()) or {}
    data.setdefault("matching", {})["fusion_model"] = {k: float(v) for k, v in calibration.fusion_model.items()}
    data.setdefault("loop_closure", {})["score_threshold"] = float(calibration.score_threshold)
    return f"# {note}\n" + yaml.safe_dump(data, sort_keys=False)
