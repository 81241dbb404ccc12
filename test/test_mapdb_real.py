"""The map database on real data with the real (small, off-the-shelf) model: build from .mcap and
.db3 bags through the CLI, reopen, query, kill a build, and compare index types on real descriptors."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from vlad_localization.cli.main import main
from vlad_localization.images import Frame, Pose, load_rgb, write_bag
from vlad_localization.images.bag import POSE_STAMPED
from vlad_localization.mapdb import GlobalIndex, MapDatabase, reindex_map
from vlad_localization.pipeline import Localizer

MAP_IDS = list(range(0, 72, 12))  # campus images 0, 12, ..., 60: ~36 m apart


def campus_poses(datasets_dir: Path) -> dict[int, Pose]:
    with open(datasets_dir / "campus_loop_72" / "data.csv") as f:
        return {int(r[0].split("_")[1].split(".")[0]): Pose.from_xy_yaw(float(r[1]), float(r[2]), float(r[3]))
                for r in csv.reader(f) if r}


def campus_frames(datasets_dir: Path, ids, step_ns: int = 10**9) -> list[Frame]:
    poses = campus_poses(datasets_dir)
    return [Frame(stamp_ns=n * step_ns, frame_id="camera", source=f"image_{i}.png", pose=poses[i],
                  loader=partial(load_rgb, datasets_dir / "campus_loop_72" / f"image_{i}.png"))
            for n, i in enumerate(ids)]


@pytest.fixture(scope="module")
def mcap_map(tmp_path_factory, datasets_dir, speed_checkpoint, speed_config_file) -> Path:
    """Raw bgr8 images + Odometry in an .mcap bag -> map via the CLI."""
    root = tmp_path_factory.mktemp("mcap")
    bag = write_bag(root / "run1", campus_frames(datasets_dir, MAP_IDS), "/camera/image_raw",
                    encoding="bgr8", pose_topic="/odom", storage="mcap")
    out = root / "map"
    rc = main(["build-map", "--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file), "--bag", str(bag),
               "--image-topic", "/camera/image_raw", "--pose-topic", "/odom", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_build_from_mcap_bag_and_query(mcap_map, datasets_dir, speed_checkpoint, speed_config):
    poses = campus_poses(datasets_dir)
    loc = Localizer.from_paths(mcap_map, speed_checkpoint, speed_config)
    assert loc.map.size == len(MAP_IDS) and loc.map.manifest.index["effective"] == "Flat"
    kf = loc.map.keyframe(2)
    assert kf.source.endswith(":/camera/image_raw") and kf.frame_id == "camera"
    assert kf.position == pytest.approx(poses[24].position, abs=1e-6)
    assert loc.map.thumbnail(2).shape == (90, 160, 3)  # 426x240 scaled to 160 wide
    for n, i in enumerate(MAP_IDS):  # a map image finds itself first, with a near-perfect patch score
        res = loc.query(load_rgb(datasets_dir / "campus_loop_72" / f"image_{i}.png"))
        assert res.candidates[0].map_id == n and res.candidates[0].patch_score > 0.9
        assert res.candidates[0].global_similarity == pytest.approx(1.0, abs=1e-3)
    # the real loop closure: image_71 revisits image_0 (5.5 m away); the best candidate is that place
    res = loc.query(load_rgb(datasets_dir / "campus_loop_72" / "image_71.png"))
    best = res.candidates[0]
    assert best.map_id == 0, [(c.map_id, c.global_similarity, c.patch_score) for c in res.candidates]
    assert math.dist(best.pose.position, poses[71].position) < 10.0
    loc.release()


def test_build_from_db3_compressed_with_keyframe_selection(tmp_path, datasets_dir, speed_checkpoint, speed_config_file):
    """CompressedImage + PoseStamped in a .db3 file; --min-time-gap keeps every other frame,
    --append adds a second run from the same bag."""
    bag = write_bag(tmp_path / "run2", campus_frames(datasets_dir, [6, 18, 30, 42], step_ns=5 * 10**8),
                    "/cam/compressed", compressed=True, pose_topic="/pose", pose_type=POSE_STAMPED, storage="sqlite3")
    db3 = next(bag.glob("*.db3"))
    out = tmp_path / "map"
    args = ["build-map", "--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file), "--bag", str(db3),
            "--image-topic", "/cam/compressed", "--pose-topic", "/pose", "--out", str(out), "--no-progress"]
    assert main(args + ["--min-time-gap", "0.9"]) == 0
    with MapDatabase.open(out) as db:
        assert db.size == 2 and db.manifest.runs[0].skipped == {"time_gap": 2}
        assert [k.source for k in db.keyframes([0, 1])] == [f"{db3}:/cam/compressed"] * 2
        assert db.keyframe(1).position is not None
    assert main(args + ["--append", "--min-distance", "50"]) == 0
    with MapDatabase.open(out) as db:
        assert [r.keyframes for r in db.manifest.runs] == [2, 2]  # 6, 30 (18 and 42 are 36 m on)
        assert db.manifest.runs[1].skipped == {"distance": 2}


def test_missing_topic_is_a_clear_error(tmp_path, mcap_map, speed_checkpoint, speed_config_file, capsys):
    bag = next(p for p in mcap_map.parent.iterdir() if p.name == "run1")
    rc = main(["build-map", "--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file), "--bag", str(bag),
               "--out", str(tmp_path / "m")])
    assert rc == 2 and "/camera/image_raw" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_sigkill_real_build_keeps_previous_map(tmp_path, datasets_dir, speed_checkpoint, speed_config_file, mcap_map):
    """SIGKILL a real CLI build mid-way: the previous map at --out is intact, no partial map."""
    import shutil

    out = tmp_path / "map"
    shutil.copytree(mcap_map, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(0, 72, 3):
        (images / f"image_{i}.png").symlink_to(datasets_dir / "campus_loop_72" / f"image_{i}.png")
    cmd = [sys.executable, "-m", "vlad_localization.cli", "build-map", "--checkpoint", str(speed_checkpoint),
           "--config", str(speed_config_file), "--images", str(images), "--out", str(out), "--batch-size", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            staging = list(tmp_path.glob(".map.staging-*"))
            if staging and (staging[0] / "global.f32").exists() and (staging[0] / "global.f32").stat().st_size:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "build finished or failed before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert MapDatabase.open(out).size == len(MAP_IDS)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["imgs", "map"]


@pytest.mark.parametrize("spec, params", [("IVF8,Flat", dict(nprobe=6)), ("HNSW16", dict(ef_search=64)),
                                          ("IVF8,PQ32", dict(nprobe=8))])
def test_index_options_agree_with_flat_on_real_descriptors(mcap_map, spec, params):
    """Real 128-d descriptors (the map's patch descriptors of 6 campus images, 1056 vectors):
    approximate indexes return Flat's top-1 for held-out real queries."""
    with MapDatabase.open(mcap_map) as db:
        patches = db.patches(range(db.size))[5].astype(np.float32)
    x = patches[:4].reshape(-1, patches.shape[-1])  # database: patches of 4 images
    q = patches[4:].reshape(-1, patches.shape[-1])  # queries: patches of 2 other images
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, flat = GlobalIndex.build("Flat", x).search(q, 10)
    index = GlobalIndex.build(spec, x)
    index.set_params(**params)
    sims, ids = index.search(q, 10, exact=x)  # PQ: shortlist re-scored exactly, as MapDatabase.search
    top1 = ids[:, 0]
    np.testing.assert_allclose(sims[:, 0], np.einsum("qd,qd->q", q, x[top1]), atol=1e-5)  # exact scores
    assert np.mean(top1 == flat[:, 0]) >= (0.9 if spec.startswith("IVF8,F") else 0.95), spec


def test_reindexed_maps_give_flat_top1(tmp_path, mcap_map, datasets_dir, speed_checkpoint, speed_config):
    """The real map re-indexed as IVF / HNSW / IVF-PQ (default search params) ranks like Flat."""
    import shutil

    queries = [load_rgb(datasets_dir / "campus_loop_72" / f"image_{i}.png") for i in (71, 3, 30)]
    speed_config.localizer.rerank = False
    loc = Localizer.from_paths(mcap_map, speed_checkpoint, speed_config)
    descs = [loc.encode(q) for q in queries]
    flat = [[c.map_id for c in loc.query(d, k=3).candidates] for d in descs]
    for spec in ("IVF2,Flat", "HNSW8", "IVF2,PQ16"):
        path = tmp_path / spec.replace(",", "_")
        shutil.copytree(mcap_map, path)
        reindex_map(path, spec)
        loc.reload_map(path)
        assert loc.map.manifest.index["spec"] == spec
        assert [[c.map_id for c in loc.query(d, k=3).candidates][0] for d in descs] == [f[0] for f in flat], spec
