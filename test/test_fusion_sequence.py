"""The fused model's sequence inputs (issue 18): while sequence scoring is on, a model of its own over
the global similarity, spatial and RANSAC scores and the sequence similarity (``choices.SEQUENCE_FEATURES``),
one group of ``matching.fusion_model`` keys per kind of sequence similarity (``choices.SEQUENCE_KINDS``)."""
from __future__ import annotations

import numpy as np
import pytest

from vlad_localization.choices import FUSED_FEATURES, SEQUENCE_FEATURES, sequence_keys
from vlad_localization.config import ConfigError, apply_overrides, load_config
from vlad_localization.matching.fusion import fused_scores, rank_weights, sequence_model


def _random_model(rng, kinds=("sequence", "contrast")) -> dict:
    model = {name: float(rng.uniform(0, 5)) for name in ("bias", *FUSED_FEATURES)}
    for kind in kinds:
        model.update({key: float(rng.uniform(-3, 5)) for key in sequence_keys(kind)})
    return model


def test_sequence_model_picks_the_group_of_the_similarity_in_use():
    model = _random_model(np.random.default_rng(0))
    plain = ("bias", *FUSED_FEATURES, *SEQUENCE_FEATURES)
    for contrast, kind in ((False, "sequence"), (True, "contrast")):
        chosen = sequence_model(model, contrast)
        assert chosen == {name: model[key] for name, key in zip(plain, sequence_keys(kind))}
    single = {k: model[k] for k in ("bias", *FUSED_FEATURES)}
    assert sequence_model(single, True) == {**single, "sequence_similarity": 0.0, "sequence_gap": 0.0}


def test_fused_score_with_a_sequence_is_the_documented_logistic_model():
    """P = sigmoid(bias + a . x + g . (x - x_top) + u S + h (S - S_top)), x_top / S_top those of the
    candidate ranked first by (a + g) . x + (u + h) S; computed directly with numpy."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        model = sequence_model(_random_model(rng), bool(rng.integers(2)))
        g, s, r, seq = rng.uniform(0, 1, (4, 7))
        x = np.stack([g, s, r, seq], axis=1)
        names = ("global_similarity", "spatial", "ransac", "sequence_similarity")
        gaps = ("global_gap", "spatial_gap", "ransac_gap", "sequence_gap")
        a, h = np.array([model[n] for n in names]), np.array([model[n] for n in gaps])
        top = x[np.argmax(x @ (a + h))]
        expected = 1 / (1 + np.exp(-(model["bias"] + x @ a + (x - top) @ h)))
        np.testing.assert_allclose(fused_scores(g, s, r, model, seq), expected, rtol=1e-12)
        np.testing.assert_allclose(rank_weights(model, True), a + h)


def test_without_a_sequence_the_single_frame_model_scores():
    rng = np.random.default_rng(2)
    model = _random_model(rng)
    single = {k: model[k] for k in ("bias", *FUSED_FEATURES)}
    g, s, r = rng.uniform(0, 1, (3, 5))
    np.testing.assert_array_equal(fused_scores(g, s, r, model), fused_scores(g, s, r, single))


def test_the_presets_ship_both_sequence_groups_and_configs_without_them_still_load():
    shipped = load_config("speed").matching.fusion_model
    assert all(key in shipped for kind in ("sequence", "contrast") for key in sequence_keys(kind))
    single = {k: shipped[k] for k in ("bias", *FUSED_FEATURES)}
    cfg = apply_overrides(load_config("speed"), {"matching.fusion_model": single})
    assert cfg.matching.fusion_model == single


@pytest.mark.parametrize("drop", ["sequence_gap", "contrast_bias"])
def test_an_incomplete_sequence_group_is_a_config_error(drop):
    model = dict(load_config("speed").matching.fusion_model)
    del model[drop]
    with pytest.raises(ConfigError, match="fusion_model"):
        apply_overrides(load_config("speed"), {"matching.fusion_model": model})
