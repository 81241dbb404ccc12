"""Map database storage, index, atomicity and corruption handling, with a synthetic encoder
(fast, no model): real-model tests are in test_mapdb_real.py."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vlad_localization.config import Config
from vlad_localization.images.frames import Frame, Pose
from vlad_localization.mapdb import (
    GlobalIndex, IndexSpec, Keyframe, KeyframeSelector, KeyframeStore, MapDatabase, MapError, MapWriter, build_map,
    merge_maps,
)
from vlad_localization.mapdb.database import INDEX_FILE, reference_npy_bytes
from vlad_localization.model.descriptors import Descriptors

DIM, NPATCH, GRID, IMG = 32, 12, (3, 4), (48, 64)


class FakeEncoder:
    """Deterministic pseudo-descriptors from image content (same image -> same descriptors)."""

    def __init__(self, sha: str = "a" * 64, delay: float = 0.0):
        self.sha, self.delay = sha, delay

    def identity(self) -> dict:
        return {"backbone": "vgg16", "num_clusters": 8, "num_pcs": DIM, "vladv2": False,
                "patch_sizes": [5], "strides": [1], "image_height": IMG[0], "image_width": IMG[1],
                "checkpoint_sha256": self.sha}

    def encode(self, images):
        time.sleep(self.delay)
        g, p = [], []
        for img in images:
            rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(img).tobytes()))
            g.append(rng.standard_normal(DIM))
            p.append(rng.standard_normal((NPATCH, DIM)))
        g = torch.nn.functional.normalize(torch.tensor(np.array(g), dtype=torch.float32), dim=1)
        p = torch.nn.functional.normalize(torch.tensor(np.array(p), dtype=torch.float32), dim=2)
        return Descriptors(g, {5: p}, GRID, IMG)


def frames(n: int, start: int = 0, step_s: float = 1.0, step_m: float = 1.0):
    for i in range(start, start + n):
        rgb = np.random.default_rng(i).integers(0, 255, (IMG[0], IMG[1], 3), dtype=np.uint8)
        yield Frame(stamp_ns=int(i * step_s * 1e9), frame_id="cam", source=f"img_{i}.png",
                    pose=Pose.from_xy_yaw(i * step_m, 0.0, 0.1 * i), image=rgb)


def image(i: int) -> np.ndarray:
    return next(frames(1, i)).rgb


CAMERA = [60.0, 60.0, 32.0, 24.0]  # every synthetic map stores views (camera model + image): views.sqlite


def cfg(**map_fields) -> Config:
    c = Config()
    c.model.batch_size = 4
    c.verification.intrinsics = CAMERA
    for k, v in map_fields.items():
        setattr(c.map, k, v)
    return c


def build(path, n=10, start=0, encoder=None, append=False, **map_fields):
    return build_map(path, frames(n, start), encoder or FakeEncoder(), cfg(**map_fields),
                     sources=["synthetic"], append=append, progress=False)


def staging_dirs(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.staging-*"))


# ---------------------------------------------------------------------------- round trip
def test_build_reopen_search_roundtrip(tmp_path):
    path = tmp_path / "map"
    summary = build(path, 10)
    assert summary.keyframes == 10 and summary.total_keyframes == 10 and summary.bytes > 0
    enc = FakeEncoder()
    with MapDatabase.open(path, identity=enc.identity()) as db:
        assert db.size == len(db) == 10 and db.path == path
        assert isinstance(db, KeyframeStore) and db.label == str(path)
        d = enc.encode([image(3)])
        sims, ids = db.search(d.global_desc.numpy(), 5)
        assert ids[0, 0] == 3 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
        patches = db.patches([3, 7])
        assert patches[5].dtype == np.float16 and patches[5].shape == (2, NPATCH, DIM)
        np.testing.assert_allclose(patches[5][0], d.patches[5][0].numpy(), atol=2e-3)
        kf = db.keyframe(3)
        assert (kf.stamp_ns, kf.frame_id, kf.source, kf.run) == (3 * 10**9, "cam", "img_3.png", 0)
        assert kf.position == pytest.approx((3.0, 0.0, 0.0))
        thumb = db.thumbnail(3)
        assert thumb.dtype == np.uint8 and thumb.shape[2] == 3 and thumb.shape[1] == min(160, IMG[1])
        assert db.manifest.runs[0].sources == ["synthetic"]
    assert not staging_dirs(path)


def test_patch_store_is_at_most_half_the_reference_npy(tmp_path):
    build(tmp_path / "map", 4)
    with MapDatabase.open(tmp_path / "map") as db:
        ours = (tmp_path / "map" / "patches_p5.f16").stat().st_size / db.size
        assert ours == NPATCH * DIM * 2
        assert ours <= 0.5 * reference_npy_bytes(db.manifest)
        assert db.stats()["patch_size_ratio_vs_reference"] <= 0.5


def test_no_thumbnails(tmp_path):
    build(tmp_path / "map", 3, store_thumbnails=False)
    with MapDatabase.open(tmp_path / "map") as db:
        assert db.thumbnail(0) is None


# ---------------------------------------------------------------------------- refusals
def test_model_mismatch_names_both(tmp_path):
    build(tmp_path / "map", 3)
    other = FakeEncoder(sha="b" * 64).identity()
    with pytest.raises(MapError, match=r"sha256=aaaaaaaaaaaa.*sha256=bbbbbbbbbbbb"):
        MapDatabase.open(tmp_path / "map", identity=other)


def _truncate(p: Path, keep: int | None = None):
    data = p.read_bytes()
    p.write_bytes(data[: (len(data) // 2 if keep is None else keep)])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda m: (m / "manifest.json").unlink(), "manifest missing"),
        (lambda m: _truncate(m / "manifest.json"), "manifest"),
        (lambda m: _truncate(m / "patches_p5.f16", 100), r"patches_p5\.f16.*truncated"),
        (lambda m: (m / "global.f32").unlink(), r"global\.f32.*missing"),
        (lambda m: _truncate(m / INDEX_FILE), r"global\.faiss.*truncated or corrupt"),
        (lambda m: (m / INDEX_FILE).unlink(), r"global\.faiss.*missing"),
        (lambda m: (m / "keyframes.sqlite").write_bytes(b"garbage" * 200), r"keyframes\.sqlite.*corrupt"),
        (lambda m: (m / "keyframes.sqlite").unlink(), r"keyframes\.sqlite.*missing"),
        (lambda m: _truncate(m / "keyframes.sqlite", 4096), r"keyframes\.sqlite"),
    ],
    ids=["no-manifest", "trunc-manifest", "trunc-patches", "no-global", "trunc-index", "no-index",
         "garbage-sqlite", "no-sqlite", "trunc-sqlite"],
)
def test_damaged_maps_are_refused_clearly(tmp_path, damage, match):
    path = tmp_path / "map"
    build(path, 6)
    damage(path)
    with pytest.raises(MapError, match=match):
        MapDatabase.open(path)


def test_sqlite_row_count_mismatch(tmp_path):
    path = tmp_path / "map"
    build(path, 6)
    with sqlite3.connect(path / "keyframes.sqlite") as db:
        db.execute("DELETE FROM keyframes WHERE id = 5")
    with pytest.raises(MapError, match="5 keyframes but the manifest says 6"):
        MapDatabase.open(path)


def test_missing_map_and_non_map_target(tmp_path):
    with pytest.raises(MapError, match="does not exist"):
        MapDatabase.open(tmp_path / "nope")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(MapError, match="not a map"):
        build(tmp_path / "docs", 2)
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


# ---------------------------------------------------------------------------- atomicity
def test_failed_build_keeps_previous_map(tmp_path):
    path = tmp_path / "map"
    build(path, 5)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken():
        yield from frames(6)
        raise OSError("bag truncated")

    with pytest.raises(OSError, match="bag truncated"):
        build_map(path, broken(), FakeEncoder(), cfg(), progress=False)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert not staging_dirs(path)
    with pytest.raises(MapError, match="no keyframes"):
        build_map(tmp_path / "empty", iter(()), FakeEncoder(), cfg(), progress=False)
    assert not (tmp_path / "empty").exists() and not staging_dirs(tmp_path / "empty")


def test_rebuild_replaces_and_append_adds_a_run(tmp_path):
    path = tmp_path / "map"
    build(path, 5)
    build(path, 4, start=100)  # replace
    with MapDatabase.open(path) as db:
        assert db.size == 4 and db.keyframe(0).source == "img_100.png"
    s = build(path, 3, start=200, append=True)
    assert s.appended and s.keyframes == 3 and s.total_keyframes == 7
    with MapDatabase.open(path) as db:
        assert db.size == 7 and [r.keyframes for r in db.manifest.runs] == [4, 3]
        assert db.keyframe(5).source == "img_201.png" and db.keyframe(5).run == 1
        _, ids = db.search(FakeEncoder().encode([image(201)]).global_desc.numpy(), 1)
        assert ids[0, 0] == 5
        assert db.thumbnail(6) is not None
    with pytest.raises(MapError, match="model"):
        build(path, 2, start=300, append=True, encoder=FakeEncoder(sha="c" * 64))
    with pytest.raises(MapError, match="does not exist"):
        build(tmp_path / "new", 2, append=True)


def _writer_with(path, n, start, append=True, **kw):
    """A MapWriter holding ``n`` synthetic keyframes, not yet committed."""
    enc = FakeEncoder()
    w = MapWriter(path, enc.identity(), append=append, **kw)
    d = enc.encode([image(i) for i in range(start, start + n)])
    kfs = [Keyframe(-1, stamp_ns=i * 10**9, frame_id="cam", source=f"img_{i}.png") for i in range(start, start + n)]
    w.add(d.global_desc.numpy(), {5: d.patches[5].numpy().astype(np.float16)}, kfs, GRID, IMG)
    return w


def test_concurrent_appends_keep_both_runs(tmp_path):
    import threading

    path = tmp_path / "map"
    build(path, 5)
    first = _writer_with(path, 3, 100)  # holds the map's write lock until it publishes
    second: dict = {}
    thread = threading.Thread(target=lambda: second.setdefault("w", _writer_with(path, 4, 200)))
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # the second appender waits instead of copying the map under the first
    first.commit(["run-A"])
    thread.join(10)
    second["w"].commit(["run-B"])
    with MapDatabase.open(path) as db:
        assert db.size == 12 and [r.sources for r in db.manifest.runs] == [["synthetic"], ["run-A"], ["run-B"]]


def test_append_keeps_the_index_settings_unless_given(tmp_path):
    path = tmp_path / "map"
    build(path, 40, index="HNSW16", ef_search=256)
    build(path, 3, start=100, append=True)  # no index settings given: the map's stay
    with MapDatabase.open(path) as db:
        assert (db.manifest.index["spec"], db.manifest.index["ef_search"]) == ("HNSW16", 256)
    build(path, 3, start=200, append=True, index="Flat")
    with MapDatabase.open(path) as db:
        assert db.manifest.index["spec"] == "Flat" and db.size == 46


def test_open_during_a_swap_reads_the_new_map(tmp_path, monkeypatch):
    """A reader that reads the old manifest, then the files of the map swapped in meanwhile (what
    ~/reload_map may meet while build-map --append publishes), opens the new map."""
    from vlad_localization.mapdb.manifest import Manifest

    path = tmp_path / "map"
    build(path, 5)
    pending = [_writer_with(path, 3, 100)]
    real = Manifest.check_model

    def swap_first(self, identity, where):
        if pending:
            pending.pop().commit(["appended"])  # publishes between the manifest read and the files
        return real(self, identity, where)

    monkeypatch.setattr(Manifest, "check_model", swap_first)
    with MapDatabase.open(path, identity=FakeEncoder().identity()) as db:
        assert db.size == 8 and not pending


def test_open_never_mixes_two_versions_of_a_map(tmp_path, monkeypatch):
    """A rebuild of the same size published half-way through an open (no error to notice): the map
    opened is the new one, whole: its index, vectors and keyframe table agree."""
    path = tmp_path / "map"
    build(path, 5)
    pending = [_writer_with(path, 5, 5, append=False)]  # images 5..9 as ids 0..4
    real = GlobalIndex.load

    def publish_first(*args, **kwargs):
        if pending:
            pending.pop().commit(["rebuilt"])
        return real(*args, **kwargs)

    monkeypatch.setattr(GlobalIndex, "load", staticmethod(publish_first))
    with MapDatabase.open(path) as db:
        _, ids = db.search(FakeEncoder().encode([image(7)]).global_desc.numpy(), 1)
        assert db.keyframe(int(ids[0, 0])).source == "img_7.png" and db.manifest.runs[0].sources == ["rebuilt"]


def test_non_finite_descriptors_are_refused(tmp_path):
    enc = FakeEncoder()
    d = enc.encode([image(0), image(1)])
    g = d.global_desc.numpy().copy()
    g[1, 3] = np.nan
    kfs = [Keyframe(-1, stamp_ns=i, frame_id="cam", source="x") for i in range(2)]
    with MapWriter(tmp_path / "map", enc.identity()) as w:
        with pytest.raises(MapError, match="NaN/inf descriptors \\(global\\)"):
            w.add(g, {5: d.patches[5].numpy().astype(np.float16)}, kfs, GRID, IMG)
        patches = d.patches[5].numpy().astype(np.float16)
        patches[0, 0, 0] = np.inf
        with pytest.raises(MapError, match="patch size 5"):
            w.add(d.global_desc.numpy(), {5: patches}, kfs, GRID, IMG)
    assert not (tmp_path / "map").exists() and not staging_dirs(tmp_path / "map")


def test_sigkill_mid_build_leaves_previous_map(tmp_path):
    path = tmp_path / "map"
    build(path, 3)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_mapdb_storage import FakeEncoder, frames, cfg
        from vlad_localization.mapdb import build_map
        build_map({str(path)!r}, frames(10_000), FakeEncoder(delay=0.05), cfg(), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the staging map has keyframes on disk
            st = staging_dirs(path)
            if st and (st[0] / "global.f32").exists() and (st[0] / "global.f32").stat().st_size > 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("build never started writing")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    with MapDatabase.open(path) as db:
        assert db.size == 3
    assert staging_dirs(path)  # left by the killed process ...
    build(path, 2)  # ... and cleaned by the next build at that path
    assert not staging_dirs(path)
    fresh = tmp_path / "fresh"  # a killed first build leaves no map directory
    proc = subprocess.Popen([sys.executable, "-c", script.replace(str(path), str(fresh))])
    time.sleep(0.1)
    deadline = time.time() + 60
    while not staging_dirs(fresh) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not fresh.exists()


# ---------------------------------------------------------------------------- merge
def test_merge_same_model_and_refuse_others(tmp_path):
    build(tmp_path / "a", 4)
    build(tmp_path / "b", 3, start=50)
    build(tmp_path / "b", 2, start=60, append=True)
    m = merge_maps(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    assert m.keyframes == 9 and [r.keyframes for r in m.runs] == [4, 3, 2]
    with MapDatabase.open(tmp_path / "ab") as db:
        assert db.keyframe(4).source == "img_50.png" and db.keyframe(8).run == 2
        _, ids = db.search(FakeEncoder().encode([image(61)]).global_desc.numpy(), 1)
        assert ids[0, 0] == 8 and db.thumbnail(8) is not None
    build(tmp_path / "c", 2, encoder=FakeEncoder(sha="d" * 64))
    with pytest.raises(MapError, match=r"same model"):
        merge_maps(tmp_path / "ac", [tmp_path / "a", tmp_path / "c"])
    assert not (tmp_path / "ac").exists()


# ---------------------------------------------------------------------------- keyframe selection
def test_keyframe_selection_thresholds(tmp_path):
    s = build(tmp_path / "t", 10, min_time_gap_s=2.5)  # frames 1 s apart -> 0, 3, 6, 9
    assert s.keyframes == 4 and s.skipped == {"time_gap": 6}
    s = build(tmp_path / "d", 10, min_distance_m=4.5)  # 1 m apart -> 0, 5
    assert s.keyframes == 2 and s.skipped == {"distance": 8}
    sel = KeyframeSelector(min_descriptor_change=0.1)
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    assert sel.accept(0, None, a) and not sel.accept(1, None, a * 1.0) and sel.accept(2, None, b)
    assert sel.skipped == {"descriptor_change": 1}
    s = build(tmp_path / "c", 6, min_descriptor_change=0.05)  # random descriptors all differ
    assert s.keyframes == 6


# ---------------------------------------------------------------------------- index
def test_index_specs_agree_with_flat_on_clustered_data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 64))
    x = centres[rng.integers(0, 50, 3000)] + 0.3 * rng.standard_normal((3000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[:200] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, flat = GlobalIndex.build("Flat", x).search(q, 10)
    for spec, params in [("IVF32,Flat", dict(nprobe=8)), ("HNSW32", dict(ef_search=128))]:
        idx = GlobalIndex.build(spec, x)
        idx.set_params(**params)
        _, ids = idx.search(q, 10)
        assert np.mean(ids[:, 0] == flat[:, 0]) >= 0.98, spec


def test_pq_map_rescores_exactly(tmp_path):
    """PQ codes are lossy; MapDatabase.search re-scores a shortlist from global.f32."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1500, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with MapWriter(tmp_path / "pq", FakeEncoder().identity(), index="IVF4,PQ16x6", nprobe=4) as w:
        w.add(x, {5: np.zeros((len(x), 1, 64), np.float16)}, [Keyframe(-1)] * len(x), (1, 1), (16, 16))
        w.commit()
    q = x[:100] + 0.05 * rng.standard_normal((100, 64)).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :5]
    with MapDatabase.open(tmp_path / "pq") as db:
        assert db.index.lossy
        sims, ids = db.search(q, 5)
    assert np.mean(ids[:, 0] == exact[:, 0]) >= 0.98
    np.testing.assert_allclose(sims[:, 0], np.sum(q * x[ids[:, 0]], axis=1), rtol=1e-5)


def test_index_spec_parsing_and_fitting():
    assert IndexSpec.parse("IVF1024,Flat").fitted(100, 64).factory() == "IVF2,Flat"
    assert IndexSpec.parse("IVF8,PQ16").fitted(20, 64).factory() == "IVF1,PQ16x4np"
    assert IndexSpec.parse("HNSW16").factory() == "HNSW16"
    with pytest.raises(MapError, match="not understood"):
        IndexSpec.parse("LSH")
    with pytest.raises(MapError, match="must divide"):
        IndexSpec.parse("IVF4,PQ7").fitted(1000, 64)


@pytest.mark.parametrize("spec", ["IVF4,Flat", "HNSW8", "IVF2,PQ8", "IVF1,PQ4x2"])
def test_small_maps_with_approximate_indexes(tmp_path, spec):
    build(tmp_path / "m", 12, index=spec)
    with MapDatabase.open(tmp_path / "m") as db:
        assert db.manifest.index["spec"] == spec
        _, ids = db.search(FakeEncoder().encode([image(7)]).global_desc.numpy(), 3)
        assert ids[0, 0] == 7


def test_maps_dropped_without_close_free_their_files(tmp_path):
    """A reloaded-away map (never closed) releases its SQLite and memory-mapped files when dropped,
    without waiting for a garbage-collection pass (the node reloads maps for hours)."""
    import gc

    import psutil

    build(tmp_path / "map", 4)
    proc = psutil.Process()
    MapDatabase.open(tmp_path / "map").search(np.ones((1, DIM), np.float32), 1)
    gc.collect()
    base = proc.num_fds()
    gc.disable()
    try:
        for _ in range(30):
            db = MapDatabase.open(tmp_path / "map")
            db.keyframe(0)
            del db
        assert proc.num_fds() <= base + 1
    finally:
        gc.enable()
