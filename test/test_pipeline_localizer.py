"""The Localizer API (vlad_localization.pipeline) on real campus images with the small model."""
from __future__ import annotations

import math

import numpy as np
import torch
import pytest

from vlad_localization.images import Pose, load_rgb
from vlad_localization.mapdb import Keyframe, MapDatabase, MapError, MapWriter, Store
from vlad_localization.mapdb.metadata import encode_thumbnail
from vlad_localization.model.descriptors import Descriptors
from vlad_localization.pipeline import Candidate, Localizer, QueryResult, scale_keypoints

MAP_IDS = [0, 12, 24, 36, 48, 60]


def write_map(path, encoder, ids, images, append=False):
    desc = encoder.encode([images[i] for i in ids])
    g, patches = desc.numpy()
    kfs = [Keyframe(-1, stamp_ns=i * 10**9, frame_id="camera", source=f"image_{i}.png",
                    position=(float(i), 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0), extra={"i": i}) for i in ids]
    with MapWriter(path, encoder.identity(), append=append) as w:
        w.add(g, {p: a.astype(np.float16) for p, a in patches.items()}, kfs, desc.grid, desc.image_size,
              [encode_thumbnail(images[i], 160) for i in ids])
        w.commit(["campus"])


@pytest.fixture(scope="module")
def images(datasets_dir):
    return {i: load_rgb(datasets_dir / "campus_loop_72" / f"image_{i}.png") for i in MAP_IDS + [30, 71]}


@pytest.fixture(scope="module")
def campus_map(tmp_path_factory, speed_encoder, images):
    path = tmp_path_factory.mktemp("loc") / "map"
    write_map(path, speed_encoder, MAP_IDS, images)
    return path


@pytest.fixture
def loc(campus_map, speed_encoder, speed_config):
    return Localizer(speed_encoder, MapDatabase.open(campus_map, speed_encoder.identity()), speed_config)


def test_query_image_returns_reranked_candidates(loc, images):
    res = loc.query(images[24], k=4)
    assert isinstance(res, QueryResult) and set(res.timings) == {"encode_ms", "search_ms", "rerank_ms"}
    assert res.query_rgb_size == (240, 426) and res.network_size == (240, 320)
    assert all(v >= 0 for v in res.timings.values()) and res.timings["encode_ms"] > 0
    assert len(res.candidates) == 4 and all(isinstance(c, Candidate) for c in res.candidates)
    best = res.candidates[0]
    assert (best.map_id, best.file, best.stamp_ns, best.frame_id) == (2, "image_24.png", 24 * 10**9, "camera")
    assert best.store == Store.PREBUILT
    assert isinstance(best.pose, Pose) and best.pose.position == (24.0, 0.0, 0.0)
    assert best.patch_score == pytest.approx(1.0, abs=0.02) and set(best.per_size) == {5}
    fused = [c.fused_score for c in res.candidates]  # the speed preset ranks by the fused P(same place)
    assert fused == sorted(fused, reverse=True) and all(0.0 <= s <= 1.0 for s in fused)
    assert all(0.0 <= c.patch_score <= 1.0 and c.score == c.fused_score for c in res.candidates)
    assert best.query_keypoints.shape == best.map_keypoints.shape == (best.inliers, 2)
    assert np.all(best.query_keypoints >= 0) and np.all(best.query_keypoints[:, 0] <= 320)
    wide = scale_keypoints(best.query_keypoints, res.network_size, res.query_rgb_size)
    assert wide[:, 0].max() == pytest.approx(best.query_keypoints[:, 0].max() * 426 / 320)
    assert loc.map.thumbnail(best.map_id).shape == (90, 160, 3)
    assert loc.map.keyframe(best.map_id).extra == {"i": 24}


def test_rerank_k_and_no_rerank(loc, images, speed_config):
    speed_config.localizer.rerank_k = 2
    res = loc.query(images[30], k=5)
    assert [c.reranked for c in res.candidates] == [True, True, False, False, False]
    tail = [c.global_similarity for c in res.candidates[2:]]
    assert tail == sorted(tail, reverse=True) and math.isnan(res.candidates[3].patch_score)
    speed_config.localizer.rerank = False
    res = loc.query(images[30])
    assert len(res.candidates) == len(MAP_IDS)  # top_k 20 > map size
    assert not any(c.reranked for c in res.candidates) and res.timings["rerank_ms"] == 0.0
    sims = [c.global_similarity for c in res.candidates]
    assert sims == sorted(sims, reverse=True)
    assert res.candidates[0].query_keypoints is None and res.candidates[0].inliers == 0


def test_query_descriptors_and_bad_inputs(loc, images, speed_encoder, speed_config):
    desc = speed_encoder.encode([images[48], images[60]])
    res = loc.query(desc.select(1), k=1)
    assert res.candidates[0].map_id == 5 and res.timings["encode_ms"] == 0.0 and res.query_rgb_size is None
    with pytest.raises(ValueError, match="one image"):
        loc.query(desc)
    with pytest.raises(ValueError, match="RGB uint8"):
        loc.query(images[0].astype(np.float32))
    speed_config.localizer.max_image_pixels = 1000
    with pytest.raises(ValueError, match="max_image_pixels"):
        loc.query(images[0])
    wrong = Descriptors(desc.global_desc[:1], {5: desc.patches[5][:1, :4]}, (2, 2), (32, 32))
    with pytest.raises(ValueError, match="model config the map was built with"):
        loc.query(wrong)


def test_reload_map_after_append_and_failed_reload(tmp_path, speed_encoder, speed_config, images):
    path = tmp_path / "map"
    write_map(path, speed_encoder, MAP_IDS[:3], images)
    loc = Localizer(speed_encoder, MapDatabase.open(path), speed_config)
    assert loc.query(images[60], k=1).candidates[0].map_id != 3
    old = loc.map
    write_map(path, speed_encoder, [60], images, append=True)  # swapped in atomically
    assert loc.map is old and old.size == 3  # the open map is unaffected by the swap
    assert loc.query(images[24], k=1).candidates[0].map_id == 2
    loc.reload_map()
    assert loc.map.size == 4 and loc.map.manifest.runs[-1].keyframes == 1
    assert loc.query(images[60], k=1).candidates[0].map_id == 3
    with pytest.raises(MapError, match="does not exist"):
        loc.reload_map(tmp_path / "missing")
    assert loc.map.size == 4  # still the good map


def test_from_paths_refuses_another_model(campus_map, speed_checkpoint, speed_config):
    speed_config.model.image_height, speed_config.model.image_width = 480, 640
    with pytest.raises(MapError, match=r"input=240x320.*input=480x640"):
        Localizer.from_paths(campus_map, speed_checkpoint, speed_config, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("half", [False, True])
def test_cuda_localizer_agrees_with_the_cpu(campus_map, speed_checkpoint, speed_config, loc, images, half):
    """Encoding and re-ranking on the GPU (fp32 or fp16 backbone) finds what the CPU finds."""
    speed_config.model.half = half
    gpu = Localizer.from_paths(campus_map, speed_checkpoint, speed_config, device="cuda")
    assert gpu.encoder.device.type == "cuda" and gpu.encoder.half == half
    for i in (24, 30, 71):
        ours, theirs = (x.query(images[i], k=len(MAP_IDS)).candidates for x in (gpu, loc))  # the whole map
        assert ours[0].map_id == theirs[0].map_id
        cpu = {c.map_id: c for c in theirs}
        for c in ours:
            assert c.global_similarity == pytest.approx(cpu[c.map_id].global_similarity, abs=2e-2 if half else 2e-3)
            assert c.patch_score == pytest.approx(cpu[c.map_id].patch_score, abs=0.1 if half else 0.02)
