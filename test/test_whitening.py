"""Learned whitening (``training.whitening``): unit tests on synthetic descriptors. The real-data
gain is tested in ``test_training.py``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlad_localization.images import Frame, Pose
from vlad_localization.images.frames import NS_PER_S
from vlad_localization.model.init_model import fit_wpca
from vlad_localization.model.wpca import WPCA
from vlad_localization.training import PlaceCriteria, Run, TrainingFrames
from vlad_localization.training.mining import place_pairs
from vlad_localization.training.whitening import (
    SHRINKAGE, Whitening, WhiteningFitter, choose_whitening, nearest_pairs, simplest_within_one_se,
)


def _two_runs(positions_a, positions_b) -> TrainingFrames:
    def run(name, xs, t0):
        return Run(name, [Frame(int((t0 + i) * NS_PER_S), pose=Pose((x, 0.0, 0.0))) for i, x in enumerate(xs)])
    return TrainingFrames.from_runs([run("a", positions_a, 0), run("b", positions_b, 10_000)])


def _descriptors(rng, places: int, dim: int = 48, nuisance: int = 6, signal_dims: int = 10):
    """Two runs over the same ``places``: each place a random point in ``signal_dims`` dims, plus per
    frame a larger random component in ``nuisance`` other dims (what changes within a place: light,
    season) and a little noise everywhere; L2-normalised, as VLADs."""
    signal = np.zeros((places, dim))
    signal[:, nuisance:nuisance + signal_dims] = rng.normal(size=(places, signal_dims))

    def run():
        x = signal + rng.normal(size=signal.shape) * 0.05
        x[:, :nuisance] += rng.normal(size=(places, nuisance)) * 2.0
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([run(), run()]).astype(np.float32)


def _cross_run_recall(desc: np.ndarray) -> float:
    n = len(desc) // 2
    return float(np.mean((desc[n:] @ desc[:n].T).argmax(1) == np.arange(n)))


def test_learned_whitening_removes_what_varies_within_a_place():
    """On descriptors whose largest variance changes within a place, PCA-whitening keeps those
    directions and retrieval across runs fails; the whitening learned from the pairs of one place
    drops them. Measured on unseen places (0.55 against 0.98 with this seed)."""
    rng = np.random.default_rng(0)
    train, test = _descriptors(rng, 200), _descriptors(rng, 100)
    xs = np.arange(200) * 50.0
    data = _two_runs(xs, xs)
    pairs = place_pairs(data, PlaceCriteria())
    w = choose_whitening(train, data, pairs, num_pcs=16)
    assert w.num_pairs == 200 and w.weight.shape == (16, 48)
    weight, bias = fit_wpca(train, 16)
    pca = WPCA.from_conv(torch.from_numpy(weight), torch.from_numpy(bias))
    pca_recall = _cross_run_recall(pca(torch.from_numpy(test)).numpy())
    learned_recall = _cross_run_recall(w.apply(test))
    assert pca_recall < 0.7 and learned_recall > 0.9, (pca_recall, learned_recall)
    # the official WPCA layer with the written conv state computes the same descriptors
    layer = WPCA.from_conv(w.conv_state()["WPCA.0.weight"], w.conv_state()["WPCA.0.bias"])
    np.testing.assert_allclose(layer(torch.from_numpy(test)).numpy(), w.apply(test), atol=1e-5)
    assert w.conv_state()["WPCA.0.weight"].shape == (16, 48, 1, 1)


def test_settings_are_chosen_on_the_validation_places():
    """Every grid point is scored on the validation places; the simplest fit (fewest PCA dims, then
    most shrinkage) within one standard error of the best recall@1 is kept; never more PCA dims than
    pairs."""
    rng = np.random.default_rng(1)
    train, val = _descriptors(rng, 600, dim=1100), _descriptors(rng, 60, dim=1100)
    train_data = _two_runs(np.arange(600) * 50.0, np.arange(600) * 50.0)
    val_data = _two_runs(np.arange(60) * 50.0, np.arange(60) * 50.0)
    crit = PlaceCriteria()
    w = choose_whitening(train, train_data, place_pairs(train_data, crit), 16, val, val_data,
                         place_pairs(val_data, crit), crit)
    # 600 pairs: 256 and 512 dims, not 1024 (the samples' rank is 1100)
    assert {(g["pca_dims"], g["shrinkage"]) for g in w.grid} == {(d, s) for d in (256, 512) for s in SHRINKAGE}
    chosen = next(g for g in w.grid if (g["pca_dims"], g["shrinkage"]) == (w.pca_dims, w.shrinkage))
    assert chosen["recall"] == w.validation
    best = max(g["recall"]["1"] for g in w.grid)
    se = math.sqrt(best * (1 - best) / 120)  # 120 validation queries
    close = [g for g in w.grid if g["recall"]["1"] >= best - se - 1e-12]
    assert w.validation["1"] >= best - se - 1e-12
    assert (w.pca_dims, -w.shrinkage) == min((g["pca_dims"], -g["shrinkage"]) for g in close)


def test_one_standard_error_rule_prefers_the_simpler_fit():
    """Synthetic recalls: a simpler fit 1 query short of the best on 100 queries (within one standard
    error, 0.048) wins; one 6 queries short does not."""
    def fit(dims, shrink, r1):
        return Whitening(np.zeros((1, 1)), np.zeros(1), dims, shrink, 1, {"1": r1, "5": r1})
    fits = [fit(1024, 0.1, 0.62), fit(512, 0.1, 0.61), fit(512, 0.3, 0.61), fit(256, 0.2, 0.56)]
    assert (lambda w: (w.pca_dims, w.shrinkage))(simplest_within_one_se(fits, 100)) == (512, 0.3)
    assert simplest_within_one_se(fits, 100_000).pca_dims == 1024  # a tiny standard error: the best only


def test_pairs_are_each_frame_with_its_nearest_positive():
    """Positives within 10 m include the neighbouring place; the pair is the nearest one."""
    data = _two_runs([0.0, 100.0], [8.0, 1.0, 100.0])
    pairs = nearest_pairs(data, place_pairs(data, PlaceCriteria()))
    # frame 0 (a, 0 m): b's 1 m frame (index 3); frame 1 (a, 100 m): b's 100 m (index 4); b's 8 m frame:
    # a's 0 m frame (0)
    assert pairs.tolist() == [[0, 2], [0, 3], [1, 4]]


def test_fitter_needs_pairs_and_keeps_num_pcs_within_the_pca_dims():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 10)).astype(np.float32)
    with pytest.raises(ValueError, match="pairs of one place"):
        WhiteningFitter(x, np.zeros((0, 2), np.int64))
    fitter = WhiteningFitter(x, np.array([[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match="num_pcs 8 <= pca_dims 4"):
        fitter.fit(8, 4, 0.2)
    data = _two_runs(np.arange(10) * 50.0, np.arange(10) * 50.0)
    with pytest.warns(UserWarning, match="num_pcs 32 capped to 10.*--whitening pca"):
        w = choose_whitening(x, data, place_pairs(data, PlaceCriteria()), 32)
    assert w.weight.shape == (10, 10) and w.pca_dims == 10  # no validation places: the default, capped
