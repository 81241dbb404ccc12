"""The typed configuration: presets mean what the official .ini files mean; bad files are refused clearly."""
from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from vlad_localization.config import PRESETS, Config, ConfigError, config_from_dict, load_config

OFFICIAL_MATCHERS = {"RANSAC": "ransac", "spatialApproximator": "spatial"}


def _official_ini(name: str) -> configparser.ConfigParser:
    patchnetvlad = pytest.importorskip("patchnetvlad", reason="the reference patchnetvlad package (test extra)")
    ini = configparser.ConfigParser()
    ini.read(Path(patchnetvlad.__file__).parent / "configs" / f"{name}.ini")
    return ini


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_the_official_ini_files(name):
    ini = _official_ini(name)
    cfg = load_config(name)
    g, m = ini["global_params"], ini["feature_match"]
    assert cfg.name == name
    assert cfg.model.num_pcs == int(g["num_pcs"])
    assert cfg.model.patch_sizes == [int(s) for s in g["patch_sizes"].split(",")]
    assert cfg.model.strides == [int(s) for s in g["strides"].split(",")]
    assert cfg.matching.patch_weights == [float(s) for s in m["patchweights2use"].split(",")]
    assert cfg.matching.matcher == OFFICIAL_MATCHERS[m["matcher"]]
    assert (cfg.model.image_height, cfg.model.image_width) == (int(m["imageresizeh"]), int(m["imageresizew"]))


def test_user_file_extends_a_preset(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("base: speed\nmodel:\n  image_height: 240\n  image_width: 320\nlocalizer:\n  top_k: 5\n")
    cfg = load_config(path)
    assert cfg.model.num_pcs == 512 and cfg.model.patch_sizes == [5]
    assert (cfg.model.image_height, cfg.model.image_width) == (240, 320)
    assert cfg.localizer.top_k == 5


@pytest.mark.parametrize(
    "text, words",
    [
        ("model:\n  patch_sizez: [5]\n", ["patch_sizez", "unknown"]),
        ("modle: {}\n", ["modle", "section"]),
        ("model:\n  patch_sizes: [2, 5]\n  strides: [1]\n", ["same length"]),
        ("matching:\n  matcher: magic\n", ["magic", "ransac"]),
        ("base: fast\n", ["fast", "preset"]),
        ("model: [1, 2\n", ["YAML"]),
        ("matching:\n  patch_weights: [1, 2]\n", ["one weight per patch size"]),
        ("matching:\n  fusion: fused\n", ["matching.fusion_model", "presets"]),
        ("matching:\n  fusion_model: {bias: 1, spatial: 2}\n", ["fusion_model", "global_similarity", "ransac"]),
        ("matching:\n  fusion_model: [1, 2]\n", ["fusion_model", "a mapping of a string to a number"]),
        ("matching:\n  fusion_model: {bias: .nan, global_similarity: 1, global_gap: 1, spatial: 1, spatial_gap: 1, "
         "ransac: 1, ransac_gap: 1}\n", ["finite"]),
        # wrong types: a YAML string is not a bool, a scalar not a list, a bool not a number
        ("localizer:\n  rerank: \"false\"\n", ["bad.yaml", "localizer", "rerank", "true/false", "'false'"]),
        ("model:\n  patch_sizes: 5\n", ["patch_sizes", "a list of integers"]),
        ("model:\n  num_clusters: \"64\"\n", ["num_clusters", "an integer"]),
        ("map:\n  nprobe: true\n", ["nprobe", "an integer or null"]),
        # out of range
        ("localizer:\n  top_k: 0\n", ["bad.yaml", "localizer.top_k", ">= 1"]),
        ("map:\n  nprobe: -1\n", ["map.nprobe", ">= 1"]),
        ("model:\n  num_pcs: 0\n", ["model.num_pcs"]),
        ("matching:\n  workers: -2\n", ["matching.workers", ">= 0"]),
        ("matching:\n  ransac_backend: gpu\n", ["matching.ransac_backend", "batched", "opencv"]),
    ],
)
def test_bad_config_files_are_refused_with_a_message_naming_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for word in words:
        assert word in str(err.value)


def test_unknown_preset_name_lists_the_presets():
    with pytest.raises(ConfigError, match="performance, speed, storage"):
        load_config("fastest")


def test_numbers_and_nulls_where_the_types_allow_them():
    cfg = config_from_dict({"matching": {"ransac_threshold_factor": 2, "ransac_seed": None},
                            "model": {"num_pcs": None}, "map": {"nprobe": 256}})
    assert cfg.matching.ransac_threshold_factor == 2 and cfg.model.num_pcs is None and cfg.map.nprobe == 256
    assert (Config().map.index, Config().map.nprobe) == (None, None)  # a map's own settings unless given
