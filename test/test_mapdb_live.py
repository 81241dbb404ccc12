"""The in-memory live map (mapdb.LiveMap): insert/search/read round trips, exact search and its
filters, eviction, saving in the map-database format (atomic, also when killed), concurrent
inserts and reads; synthetic descriptors that encode their id (a torn read is detectable), plus
one round trip with real descriptors."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vlad_localization.mapdb import Keyframe, KeyframeStore, LiveMap, MapDatabase, MapError, MapWriter, merge_maps
from vlad_localization.mapdb.metadata import encode_thumbnail

DIM, NPATCH, GRID, IMG = 32, 20, (8, 9), (64, 72)  # 4 x 5 patches of size 5 on an 8 x 9 grid
IDENTITY = {"backbone": "vgg16", "num_clusters": 8, "num_pcs": DIM, "vladv2": False, "patch_sizes": [5],
            "strides": [1], "image_height": IMG[0], "image_width": IMG[1], "checkpoint_sha256": "b" * 64}
MAP_FILES = {"manifest.json", "global.faiss", "global.f32", "patches_p5.f16", "keyframes.sqlite"}


def global_of(i: int) -> np.ndarray:
    """Keyframe ``i``'s unit global descriptor (a function of the id)."""
    v = np.sin(0.37 * (i + 1) * np.arange(1, DIM + 1) + i).astype(np.float32)
    return v / np.linalg.norm(v)


def patches_of(i: int) -> np.ndarray:
    """Keyframe ``i``'s (NPATCH, DIM) patch rows: integers < 1024, exact in float16."""
    return ((np.arange(NPATCH * DIM) + 7 * i) % 1021).reshape(NPATCH, DIM).astype(np.float16)


def keyframe_of(i: int, travel: bool = True) -> Keyframe:
    return Keyframe(-1, stamp_ns=i * 10**8, frame_id="cam", source=f"kf{i}", position=(float(i), 0.0, 0.0),
                    orientation=(0.0, 0.0, 0.0, 1.0), extra={"travel_m": 0.5 * i} if travel else {})


def thumb_of(i: int) -> bytes:
    return b"jpeg-of-%d" % i  # stored as bytes; only thumbnail() decodes


def add(live: LiveMap, i: int, thumbnail: bytes | None = None):
    return live.add(global_of(i), {5: patches_of(i)}, keyframe_of(i),
                    thumb_of(i) if thumbnail is None else thumbnail, GRID, IMG)


def filled(n: int, **kwargs) -> LiveMap:
    live = LiveMap(IDENTITY, **kwargs)
    for i in range(n):
        add(live, i)
    return live


def check_keyframe(i: int, kf: Keyframe, patches: np.ndarray) -> None:
    """Keyframe ``i``'s metadata and patches are what was inserted for it."""
    assert (kf.source, kf.stamp_ns, kf.position, kf.extra) == (f"kf{i}", i * 10**8, (float(i), 0.0, 0.0), {"travel_m": 0.5 * i})
    np.testing.assert_array_equal(patches, patches_of(i))


def staging_dirs(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.staging-*"))


def brute_force(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    sims = q @ x.T
    if allowed is not None:
        sims[:, ~allowed] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


# ---------------------------------------------------------------------------- round trips
def test_add_search_read_round_trip():
    live = LiveMap(IDENTITY)
    assert live.manifest is None and len(live) == 0 and live.nbytes == 0
    assert isinstance(live, KeyframeStore) and "this run's keyframes" in live.label
    sims, ids = live.search(global_of(0), 5)
    assert sims.shape == ids.shape == (1, 0)
    assert live.keyframes(ids[0]) == [] and live.patches(ids[0]) == {}  # no layout yet: no patch sizes
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    sizes = []
    for i in range(10):
        assert add(live, i, encode_thumbnail(rgb, 40)) == i
        sizes.append(live.nbytes)
    assert np.all(np.diff(sizes) > 0) and sizes[-1] > 10 * (DIM * 4 + NPATCH * DIM * 2)
    assert live.size == len(live) == 10 and not live.full and live.evicted == 0
    assert live.stats() == {"keyframes": 10, "evicted": 0, "bytes": sizes[-1], "max_keyframes": 20000,
                            "eviction": "oldest", "full": False}
    m = live.manifest
    assert (m.dim, m.grid, m.image_size, m.num_patches, m.keyframes) == (DIM, GRID, IMG, {5: NPATCH}, 10)
    assert m.model["patch_sizes"] == [5] and m.model["strides"] == [1]
    sims, ids = live.search(np.stack([global_of(3), global_of(7)]), 4)
    assert ids.shape == (2, 4) and ids.dtype == np.int64 and sims.dtype == np.float32
    assert list(ids[:, 0]) == [3, 7] and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)
    kfs, patches = live.keyframes([7, 2, 7]), live.patches([7, 2, 7])
    assert [k.id for k in kfs] == [7, 2, 7] and patches[5].shape == (3, NPATCH, DIM)
    assert patches[5].dtype == np.float16
    for i, kf, p in zip([7, 2, 7], kfs, patches[5]):
        check_keyframe(i, kf, p)
    assert live.keyframe(4).id == 4 and live.keyframe(4).run == 0
    kfs[0].extra["travel_m"] = -1.0  # copies: the store is not modified through them
    assert live.keyframe(7).extra == {"travel_m": 3.5}
    thumb = live.thumbnail(5)
    assert thumb.shape == (30, 40, 3) and thumb.dtype == np.uint8
    assert np.abs(thumb.astype(int).mean() - rgb.mean()) < 10
    with pytest.raises(KeyError, match="not in the live map"):
        live.keyframes([10])
    with pytest.raises(KeyError):
        live.patches([-1])
    with pytest.raises(ValueError, match="query descriptor"):
        live.search(np.ones(DIM + 1, np.float32), 3)
    assert LiveMap(IDENTITY, thumbnails=False).add(global_of(0), {5: patches_of(0)}, keyframe_of(0), b"x", GRID, IMG) == 0


def test_search_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    live = LiveMap(IDENTITY)
    for i, g in enumerate(x):
        live.add(g, {5: patches_of(i)}, keyframe_of(i), None, GRID, IMG)
    q = rng.standard_normal((6, DIM)).astype(np.float32)
    for k in (1, 7, 300, 1000):
        sims, ids = live.search(q, k)
        want_sims, want_ids = brute_force(x, q, k)
        assert ids.shape == (6, min(k, 300))
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(sims, want_sims, rtol=1e-5, atol=1e-6)


def test_filters_never_return_excluded_keyframes():
    rng = np.random.default_rng(2)
    live = LiveMap(IDENTITY)
    n = 200
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    no_travel = set(range(0, n, 9))  # no travel_m: always pass the travel filter
    no_stamp = set(range(0, n, 13))
    for i in range(n):
        kf = keyframe_of(i, travel=i not in no_travel)
        if i in no_stamp:
            kf.stamp_ns = None
        live.add(x[i], {5: patches_of(i)}, kf, None, GRID, IMG)
    stamps = np.array([np.iinfo(np.int64).min if i in no_stamp else i * 10**8 for i in range(n)])
    travel = np.array([np.nan if i in no_travel else 0.5 * i for i in range(n)])
    q = x[rng.integers(0, n, 8)] + 0.1 * rng.standard_normal((8, DIM)).astype(np.float32)
    for max_stamp, max_travel in [(50 * 10**8, None), (None, 30.0), (120 * 10**8, 20.0), (-1, None), (None, -1.0)]:
        allowed = np.ones(n, bool)
        if max_stamp is not None:
            allowed &= stamps <= max_stamp
        if max_travel is not None:
            allowed &= ~(travel > max_travel)
        sims, ids = live.search(q, 25, max_stamp_ns=max_stamp, max_travel_m=max_travel)
        assert ids.shape == (8, min(25, allowed.sum()))
        assert allowed[ids].all()
        want_sims, want_ids = brute_force(x, q, ids.shape[1], allowed)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(sims, want_sims, rtol=1e-5, atol=1e-6)
    _, ids = live.search(q, 1000, max_stamp_ns=-1, max_travel_m=-1.0)  # only keyframes without either
    assert set(ids[0]) == no_stamp & no_travel


# ---------------------------------------------------------------------------- bounds and bad input
def test_eviction_oldest_keeps_ids_stable():
    live = filled(25, max_keyframes=10, eviction="oldest", chunk=2)
    assert (live.size, live.evicted, live.next_id, live.full) == (10, 15, 25, True)
    assert list(live.live_ids()) == list(range(15, 25))
    sims, ids = live.search(np.stack([global_of(i) for i in range(25)]), 100)
    assert ids.shape == (25, 10) and all(set(row) == set(range(15, 25)) for row in ids)
    assert list(ids[15:, 0]) == list(range(15, 25))  # the live ones still find themselves
    for i in range(15, 25):
        check_keyframe(i, live.keyframe(i), live.patches([i])[5][0])
    with pytest.raises(KeyError, match="evicted"):
        live.keyframe(3)
    with pytest.raises(KeyError):
        live.patches([0])
    # an evicted keyframe's data stays readable until more than `chunk` newer insertions
    check_keyframe(14, live.keyframe(14), live.patches([14])[5][0])
    with live.reading():  # strict: nothing is released inside the block
        _, ids = live.search(global_of(15), 1)
        for i in range(25, 60):
            add(live, i)
        check_keyframe(15, live.keyframe(int(ids[0, 0])), live.patches(ids[0])[5][0])
    add(live, 60)  # released at the next insertion
    with pytest.raises(KeyError):
        live.keyframe(15)
    assert (live.size, live.evicted, live.manifest.keyframes) == (10, 51, 10)
    # memory stays bounded: at most two released-late chunks beyond the searchable ones
    row = DIM * 4 + 16 + NPATCH * DIM * 2
    assert live.nbytes < (10 + 3 * 2) * (row + 1000)


def test_views_are_kept_released_and_saved_with_their_keyframes(tmp_path):
    """A keyframe's verification view (camera model + image) lives and goes with its other data,
    is counted in nbytes and saved to the map's views.sqlite (renumbered like the keyframes)."""
    from vlad_localization.mapdb.views import KeyframeView
    from vlad_localization.verification import PinholeCamera

    def view_of(i: int) -> KeyframeView:
        rgb = np.full((48, 64, 3), i, np.uint8)
        return KeyframeView.capture(rgb, PinholeCamera(50.0 + i, 50.0, 32.0, 24.0), store_image=i % 2 == 0)

    live = LiveMap(IDENTITY, max_keyframes=6, chunk=2)
    for i in range(10):
        live.add(global_of(i), {5: patches_of(i)}, keyframe_of(i), None, GRID, IMG, view=view_of(i) if i != 7 else None)
    assert live.view(8).camera.fx == 58.0 and live.view(8).image is not None and live.view(9).image is None
    assert live.view(7) is None
    with pytest.raises(KeyError):
        live.view(0)  # evicted and released
    live.save(tmp_path / "map")
    with MapDatabase.open(tmp_path / "map") as db:  # saved id = live id - 4
        assert db.manifest.views == {"cameras": 5, "images": 3, "depth": 0}
        assert db.view(4).camera.fx == 58.0 and db.view(3) is None and db.view(4).image == live.view(8).image
    bare = LiveMap(IDENTITY, max_keyframes=6, chunk=2)
    for i in range(10):
        bare.add(global_of(i), {5: patches_of(i)}, keyframe_of(i), None, GRID, IMG)
    assert live.nbytes - bare.nbytes == sum(live.view(i).nbytes for i in live.live_ids() if live.view(i)) + \
        sum(view_of(i).nbytes for i in (4, 5))  # evicted, not yet released


def test_eviction_refuse():
    live = filled(5, max_keyframes=5, eviction="refuse")
    assert live.full and add(live, 5) is None
    assert (live.size, live.evicted, live.next_id) == (5, 0, 5)
    assert list(live.search(global_of(5), 10)[1][0]) != [] and 5 not in live.search(global_of(5), 10)[1][0]
    with pytest.raises(MapError, match="eviction 'lru' is not one of oldest | refuse"):
        LiveMap(IDENTITY, eviction="lru")
    with pytest.raises(MapError, match="max_keyframes"):
        LiveMap(IDENTITY, max_keyframes=0)


def test_bad_keyframes_are_refused_and_leave_nothing():
    live = LiveMap(IDENTITY)
    g, p = global_of(0), patches_of(0).astype(np.float32)
    with pytest.raises(MapError, match="first keyframe of a live map needs grid"):
        live.add(g, {5: p}, keyframe_of(0))
    g_nan = g.copy()
    g_nan[3] = np.nan
    with pytest.raises(MapError, match=r"NaN/inf descriptors \(global\)"):
        live.add(g_nan, {5: p}, keyframe_of(0), None, GRID, IMG)
    for bad in (np.inf, 1e6):  # 1e6 overflows float16
        p_bad = p.copy()
        p_bad[0, 0] = bad
        with pytest.raises(MapError, match=r"NaN/inf descriptors \(patch size 5\)"):
            live.add(g, {5: p_bad}, keyframe_of(0), None, GRID, IMG)
    assert (live.size, live.next_id, live.manifest) == (0, 0, None)
    assert live.add(g, {5: p}, keyframe_of(0), None, GRID, IMG) == 0
    with pytest.raises(MapError, match="33 dims"):
        live.add(np.append(g, 0.0), {5: np.zeros((NPATCH, DIM + 1))}, keyframe_of(1))
    with pytest.raises(MapError, match="differ from the live map"):
        live.add(g, {5: p[:10]}, keyframe_of(1))
    with pytest.raises(MapError, match="differ from the live map"):
        live.add(g, {2: p}, keyframe_of(1))
    with pytest.raises(MapError, match="grid"):
        live.add(g, {5: p}, keyframe_of(1), None, (9, 9), IMG)
    with pytest.raises(MapError, match="travel_m"):
        live.add(g, {5: p}, Keyframe(-1, extra={"travel_m": "far"}))
    assert (live.size, live.next_id) == (1, 1)


# ---------------------------------------------------------------------------- saving
def check_saved(path: Path, first: int, n: int) -> MapDatabase:
    """The map at ``path`` holds live keyframes first..first+n-1 as ids 0..n-1, completely."""
    db = MapDatabase.open(path, IDENTITY)  # checks every file against the manifest
    assert {p.name for p in path.iterdir()} == MAP_FILES
    assert db.size == n and (db.manifest.grid, db.manifest.image_size, db.manifest.num_patches) == (GRID, IMG, {5: NPATCH})
    ids = np.unique(np.r_[0, n - 1, np.linspace(0, n - 1, 7).astype(int)])
    for j, kf, p in zip(ids, db.keyframes(ids), db.patches(ids)[5]):
        assert kf.id == j
        check_keyframe(first + j, kf, p)
        np.testing.assert_array_equal(db.global_desc[j], global_of(first + j))
        assert db.table.thumbnail_bytes(int(j)) == thumb_of(first + j)
    return db


def test_save_opens_as_a_map_with_the_same_results(tmp_path):
    live = filled(40)
    manifest = live.save(tmp_path / "map", sources=["live run"])
    assert manifest.keyframes == 40 and manifest.runs[0].sources == ["live run"]
    q = np.stack([global_of(i) for i in (0, 11, 39)]) + 0.05
    with check_saved(tmp_path / "map", 0, 40) as db:
        (live_sims, live_ids), (sims, ids) = live.search(q, 6), db.search(q, 6)
        np.testing.assert_array_equal(live_ids, ids)  # the live ids: nothing was evicted
        np.testing.assert_allclose(live_sims, sims, atol=1e-6)
        assert [k.__dict__ for k in db.keyframes(range(40))] == [k.__dict__ for k in live.keyframes(range(40))]
        np.testing.assert_array_equal(db.patches(range(40))[5], live.patches(range(40))[5])
    merged = merge_maps(tmp_path / "merged", [tmp_path / "map", tmp_path / "map"])  # as merge-maps does
    assert merged.keyframes == 80 and [r.keyframes for r in merged.runs] == [40, 40]
    with MapWriter(tmp_path / "map", IDENTITY, append=True) as writer:  # as build-map --append does
        writer.add(global_of(40)[None], {5: patches_of(40)[None]}, [keyframe_of(40)], thumbnails=[thumb_of(40)])
        writer.commit(["appended"])
    check_saved(tmp_path / "map", 0, 41).close()
    evicting = filled(70, max_keyframes=30, chunk=4)  # saved ids = live id - oldest live id
    evicting.save(tmp_path / "evicted", index="HNSW16")
    with check_saved(tmp_path / "evicted", 40, 30) as db:
        assert db.index.spec == "HNSW16"
        _, live_ids = evicting.search(q, 5)
        _, saved_ids = db.search(q, 5)
        np.testing.assert_array_equal(live_ids - 40, saved_ids)


def test_save_replaces_an_existing_map_atomically(tmp_path):
    path = tmp_path / "map"
    live = filled(10)
    live.save(path)
    held = MapDatabase.open(path, IDENTITY)  # a reader of the old version keeps it
    for i in range(10, 15):
        add(live, i)
    live.save(path)
    check_saved(path, 0, 15).close()
    assert held.size == 10 and len(held.keyframes(range(10))) == 10
    held.close()
    assert not staging_dirs(path)
    (tmp_path / "file").write_text("not a map")
    with pytest.raises(MapError, match="not a map directory"):
        live.save(tmp_path / "file")


def test_saving_an_empty_live_map_is_an_error(tmp_path):
    with pytest.raises(MapError, match="nothing to save .* no keyframes yet"):
        LiveMap(IDENTITY).save(tmp_path / "map")
    assert not (tmp_path / "map").exists() and not staging_dirs(tmp_path / "map")
    closed = filled(3)
    closed.close()
    with pytest.raises(MapError, match="closed"):
        closed.save(tmp_path / "map")
    assert closed.search(global_of(0), 3)[1].shape == (1, 0)


_SAVE_LOOP = """
import sys
sys.path.insert(0, {testdir!r})
from test_mapdb_live import IDENTITY, add, filled
live = filled({start})
n = {start}
while True:
    live.save({path!r})
    print(n, flush=True)
    for _ in range(10):
        add(live, n)
        n += 1
"""


def save_loop(path: Path, start: int) -> subprocess.Popen:
    """A process that saves a growing live map at ``path`` over and over, printing each size saved."""
    script = textwrap.dedent(_SAVE_LOOP.format(testdir=str(Path(__file__).parent), start=start, path=str(path)))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()


def test_killed_save_leaves_the_previous_map_or_nothing(tmp_path):
    start = 1500
    fresh = tmp_path / "fresh"  # killed during its first save: no map at all
    proc = save_loop(fresh, start)
    deadline = time.time() + 60
    while not staging_dirs(fresh) and time.time() < deadline:
        time.sleep(0.002)
    kill(proc)
    assert staging_dirs(fresh) and not fresh.exists()
    path = tmp_path / "map"
    rng = random.Random(0)
    mid_save = 0
    for _ in range(5):
        proc = save_loop(path, start)
        assert proc.stdout.readline().strip()  # one save completed
        time.sleep(rng.uniform(0.0, 0.6))
        kill(proc)
        mid_save += bool(staging_dirs(path))
        n = MapDatabase.open(path).size
        assert (n - start) % 10 == 0 and n >= start
        check_saved(path, 0, n).close()
    assert mid_save, "no kill landed inside a save"
    live = filled(3)
    live.save(path)  # cleans the staging directories of the killed processes
    live.save(fresh)
    assert not staging_dirs(path) and not staging_dirs(fresh)
    check_saved(path, 0, 3).close()


# ---------------------------------------------------------------------------- concurrency
def test_concurrent_inserts_searches_and_saves_never_tear(tmp_path):
    """One thread inserts thousands of keyframes (evicting), three search and read them back, one
    saves: every id a search returns has the metadata, patches, thumbnail and similarity inserted
    for that id, honours the stamp filter, and every saved map is complete and consecutive."""
    n_total = 4000
    live = LiveMap(IDENTITY, max_keyframes=1500, eviction="oldest", chunk=64)
    done = threading.Event()
    errors: list[BaseException] = []
    counts = {"reads": 0, "saves": 0}

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                done.set()
        return run

    @guarded
    def writer():
        for i in range(n_total):
            assert add(live, i) == i
            if i % 500 == 0:
                time.sleep(0.01)  # let the readers in at every size
        done.set()

    def first_keyframe():  # the layout (patch sizes, dim) exists from the first add on
        while len(live) == 0:
            time.sleep(0.001)

    @guarded
    def reader(seed):
        rng = np.random.default_rng(seed)
        first_keyframe()
        while not done.is_set():
            target = int(rng.integers(0, max(1, live.next_id)))
            q = global_of(target) + 0.2 * rng.standard_normal(DIM).astype(np.float32)
            max_stamp = None if rng.random() < 0.5 else int(rng.integers(0, max(1, live.next_id))) * 10**8
            with live.reading():
                sims, ids = live.search(q, 8, max_stamp_ns=max_stamp)
                kfs, patches = live.keyframes(ids[0]), live.patches(ids[0])[5]
                thumbs = [live.thumbnail_bytes(i) for i in ids[0]]
            for i, s, kf, p, t in zip(ids[0], sims[0], kfs, patches, thumbs):
                check_keyframe(int(i), kf, p)
                assert t == thumb_of(int(i)) and abs(s - global_of(int(i)) @ q) < 1e-4
                assert max_stamp is None or kf.stamp_ns <= max_stamp
            counts["reads"] += 1

    @guarded
    def saver():
        first_keyframe()
        while not done.is_set():
            live.save(tmp_path / "map")
            with MapDatabase.open(tmp_path / "map", IDENTITY) as db:
                first = int(db.keyframe(0).source[2:])
                check_saved(tmp_path / "map", first, db.size).close()
                assert [k.source for k in db.keyframes(range(db.size))] == [f"kf{first + j}" for j in range(db.size)]
            counts["saves"] += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=saver)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    assert (live.size, live.evicted, live.next_id) == (1500, n_total - 1500, n_total)
    assert counts["reads"] >= 30 and counts["saves"] >= 1, counts
    check_saved(tmp_path / "map", int(MapDatabase.open(tmp_path / "map").keyframe(0).source[2:]),
                MapDatabase.open(tmp_path / "map").size).close()


# ---------------------------------------------------------------------------- real descriptors
def test_real_descriptors_round_trip(tmp_path, speed_encoder, speed_config, datasets_dir):
    from vlad_localization.images import load_rgb
    from vlad_localization.pipeline import Localizer

    images = [load_rgb(datasets_dir / "campus_loop_72" / f"image_{i}.png") for i in (0, 20, 40, 60)]
    desc = speed_encoder.encode(images)
    g, patches = desc.numpy()
    live = LiveMap(speed_encoder.identity())
    for i, img in enumerate(images):
        kf = Keyframe(-1, stamp_ns=i * 10**9, source=f"image_{20 * i}.png", extra={"travel_m": 10.0 * i})
        live.add(g[i], {p: a[i] for p, a in patches.items()}, kf, encode_thumbnail(img, 160), desc.grid, desc.image_size)
    sims, ids = live.search(g, 4)
    assert list(ids[:, 0]) == [0, 1, 2, 3] and np.allclose(sims[:, 0], 1.0, atol=1e-4)
    _, ids = live.search(g[3], 4, max_stamp_ns=2 * 10**9, max_travel_m=15.0)
    assert list(sorted(ids[0])) == [0, 1]
    # the Localizer queries a live map as a prebuilt one (manifest, search, keyframes, patches)
    res = Localizer(speed_encoder, live, speed_config).query(images[2])
    assert res.candidates[0].map_id == 2 and res.candidates[0].reranked and res.map is live
    live.save(tmp_path / "map")
    with MapDatabase.open(tmp_path / "map", speed_encoder.identity()) as db:
        for a, b in zip(live.search(g, 4), db.search(g, 4)):
            np.testing.assert_allclose(a, b, atol=1e-6)
        for p, a in patches.items():
            np.testing.assert_array_equal(db.patches(range(4))[p], a.astype(np.float16))
            np.testing.assert_array_equal(live.patches(range(4))[p], a.astype(np.float16))
        assert [k.extra["travel_m"] for k in db.keyframes(range(4))] == [0.0, 10.0, 20.0, 30.0]
        assert db.thumbnail(3).shape == live.thumbnail(3).shape == (90, 160, 3)
