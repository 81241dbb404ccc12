"""build-map (image folder), map-info, query and merge-maps through the CLI, on real images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from vlad_localization.cli.main import main
from vlad_localization.mapdb import MapDatabase

JSON_KEYS = {"map_id", "map_stamp", "source", "global_similarity", "patch_score", "inliers", "fused_score", "file",
             "sequence_similarity"}


def image_folder(root: Path, datasets_dir: Path, ids) -> Path:
    """A temporary folder with copies of some campus images (copies: iter_folder matches CSV rows
    by resolved path, so symlinked images would lose their poses)."""
    root.mkdir()
    for i in ids:
        shutil.copy(datasets_dir / "campus_loop_72" / f"image_{i}.png", root)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory, datasets_dir, speed_checkpoint, speed_config_file):
    root = tmp_path_factory.mktemp("cli")
    return {"root": root, "data": datasets_dir,
            "common": ["--checkpoint", str(speed_checkpoint), "--config", str(speed_config_file)]}


@pytest.fixture(scope="module")
def map_a(env):
    folder = image_folder(env["root"] / "a_imgs", env["data"], [0, 20, 40, 60])
    (folder / "image_99.png").write_bytes(b"not a png")  # skipped and counted, not fatal
    out = env["root"] / "map_a"
    rows = (env["data"] / "campus_loop_72" / "data.csv").read_text().splitlines()
    poses = folder / "poses.csv"  # the rows of our images (file,x,y,yaw)
    poses.write_text("\n".join(r for r in rows if r.split(",")[0] in {p.name for p in folder.iterdir()}) + "\n")
    assert main(["build-map", *env["common"], "--images", str(folder), "--poses", str(poses),
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_build_from_folder_summary_and_map_info(map_a, capsys, env):
    with MapDatabase.open(map_a) as db:
        assert db.size == 4 and db.manifest.runs[0].skipped == {"unreadable_image": 1}
        assert db.keyframe(1).position is not None and db.keyframe(1).source.endswith("image_20.png")
    assert main(["map-info", str(map_a)]) == 0
    text = capsys.readouterr().out
    assert "keyframes 4 (4 with pose, 4 thumbnails)" in text and "unreadable_image 1" in text
    assert "% of the reference float32 .npy" in text and "fits preset(s) none" in text
    assert main(["map-info", "--json", str(map_a)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["keyframes"] == 4 and info["stats"]["patch_size_ratio_vs_reference"] <= 0.5
    assert info["manifest"]["model"]["image_height"] == 240 and info["manifest"]["index"]["spec"] == "Flat"
    assert info["fits_presets"] == [] and info["known_checkpoint"] is None  # 240x320: a config of its own


def test_query_json_and_table(map_a, env, capsys):
    q = [str(env["data"] / "campus_loop_72" / f"image_{i}.png") for i in (40, 71)]
    assert main(["query", "--map", str(map_a), *env["common"], "--top-k", "3", "--json", *q]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == q
    for line in lines:
        assert len(line["candidates"]) == 3 and all(set(c) == JSON_KEYS for c in line["candidates"])
        scores = [c["patch_score"] for c in line["candidates"]]
        assert scores == sorted(scores, reverse=True)
    assert lines[0]["candidates"][0]["map_id"] == 2 and lines[0]["candidates"][0]["map_stamp"] == 2.0
    assert lines[1]["candidates"][0]["map_id"] == 0  # image_71 closes the loop at image_0
    assert main(["query", "--map", str(map_a), *env["common"], "--no-rerank", "--json", q[0]]) == 0
    line = json.loads(capsys.readouterr().out)
    assert all(c["patch_score"] is None for c in line["candidates"]) and len(line["candidates"]) == 4
    assert main(["query", "--map", str(map_a), *env["common"], "--top-k", "2", q[0]]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "image_40.png" in out


def test_query_top_k_defaults_to_the_config(map_a, env, capsys):
    small = Path(env["common"][3])
    cfg = env["root"] / "top2.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(small.read_text()), "localizer": {"top_k": 2}}))
    q = str(env["data"] / "campus_loop_72" / "image_40.png")
    argv = ["query", "--map", str(map_a), "--checkpoint", env["common"][1], "--config", str(cfg), "--json", q]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["candidates"]) == 2


def test_merge_maps_and_refusals(map_a, env, capsys):
    folder = image_folder(env["root"] / "b_imgs", env["data"], [10, 50])
    map_b = env["root"] / "map_b"
    assert main(["build-map", *env["common"], "--images", str(folder), "--out", str(map_b), "--no-progress",
                 "--no-thumbnails"]) == 0
    merged = env["root"] / "merged"
    assert main(["merge-maps", str(merged), str(map_a), str(map_b), "--index", "HNSW8"]) == 0
    assert "6 keyframes, 2 runs" in capsys.readouterr().out
    with MapDatabase.open(merged) as db:
        assert db.size == 6 and db.keyframe(5).source.endswith("image_50.png")
        assert db.thumbnail(0) is not None and db.thumbnail(5) is None
        assert db.manifest.index["effective"] == "HNSW8"
    other = env["root"] / "other"  # same files, another checkpoint in the manifest
    shutil.copytree(map_a, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["checkpoint_sha256"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main(["merge-maps", str(env["root"] / "bad"), str(map_a), str(other)]) == 2
    assert "same model" in capsys.readouterr().err and not (env["root"] / "bad").exists()
    assert main(["query", "--map", str(other), *env["common"], str(folder / "image_10.png")]) == 2
    err = capsys.readouterr().err
    assert "sha256=ffffffffffff" in err and "was built with model" in err


def test_build_errors_leave_nothing(env, capsys):
    out = env["root"] / "never"
    assert main(["build-map", *env["common"], "--images", str(env["root"] / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    empty = env["root"] / "empty_imgs"
    empty.mkdir()
    assert main(["build-map", *env["common"], "--images", str(empty), "--out", str(out), "--no-progress"]) == 2
    assert "no keyframes" in capsys.readouterr().err and not out.exists()
    assert main(["map-info", str(out)]) == 2
