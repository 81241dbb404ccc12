"""`vlad-localization replay`: the node's pipeline offline over a bag, writing what it would publish."""
from __future__ import annotations

import json

from vlad_localization.cli.main import main as cli
from vlad_localization.images.bag import write_bag
from vlad_localization.images.frames import Frame

S = 10**9


def test_replay_writes_candidates_and_the_loop_closure(campus_map, tmp_path, capsys):
    frames = [Frame(stamp_ns=i * S, frame_id="camera", image=campus_map.image(i)) for i in (3, 40, 71)]
    bag = write_bag(tmp_path / "bag", frames, "/cam/image_raw/compressed", compressed=True, storage="mcap")
    out = tmp_path / "candidates.jsonl"
    rc = cli(["replay", "--bag", str(bag), "--image-topic", "/cam/image_raw/compressed",
              "--map", str(campus_map.map_dir), "--checkpoint", str(campus_map.checkpoint),
              "--config", str(campus_map.config), "--score-threshold", "0", "--min-time-gap", "30",
              "--out", str(out)])
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query_stamp"] for r in records] == [3.0, 40.0, 71.0]
    assert [r["candidates"][0]["map_stamp"] for r in records] == [3.0, 40.0, 71.0]
    assert records[2]["loop_closure"][0] == 71.0
    assert campus_map.is_true_loop_closure(*records[2]["loop_closure"])
    for r in records:  # the rule: best-ranked re-ranked candidate >= 30 s away (threshold 0)
        far = [c for c in r["candidates"]
               if c["patch_score"] is not None and abs(c["map_stamp"] - r["query_stamp"]) >= 30]
        assert r["loop_closure"] == ([r["query_stamp"], far[0]["map_stamp"]] if far else None)
        assert set(r["timings"]) >= {"encode_ms", "search_ms", "rerank_ms", "total_ms"}
    err = capsys.readouterr().err
    assert "loop closure t=71.000 -> prebuilt keyframe" in err and ": 3 frames;" in err
    # localize mode (the config's default): the prebuilt map only, no keyframe of the run
    assert all(c["source"] == 0 for r in records for c in r["candidates"]) and all(r["keyframe"] is None for r in records)


def test_replay_without_a_closure_says_how_close_the_best_came_and_how_to_calibrate(campus_map, tmp_path, capsys):
    """Nothing reaches the threshold: the summary names the best proposal, its score and the threshold,
    and the command that fits the threshold to the robot; it is the score the JSON records."""
    frames = [Frame(stamp_ns=i * S, frame_id="camera", image=campus_map.image(i)) for i in (3, 40, 71)]
    bag = write_bag(tmp_path / "bag", frames, "/cam/image_raw", storage="mcap")
    out = tmp_path / "candidates.jsonl"
    assert cli(["replay", "--bag", str(bag), "--image-topic", "/cam/image_raw", "--map", str(campus_map.map_dir),
                "--checkpoint", str(campus_map.checkpoint), "--config", str(campus_map.config),
                "--score-threshold", "1.0", "--min-time-gap", "30", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    scored = [(r["candidates"][r["decision"]["rank"]], r) for r in records if r["decision"]["status"] == "below_threshold"]
    below = [(c["patch_score"] if c["fused_score"] is None else c["fused_score"], r) for c, r in scored]
    assert below and not any(r["loop_closure"] for r in records)
    score, best = max(below, key=lambda row: row[0])
    err = capsys.readouterr().err
    assert f"no loop closure: the best proposal (t={best['query_stamp']:.3f} -> prebuilt keyframe" in err
    assert f"scored {score:.3f}, below loop_closure.score_threshold 1." in err and "vlad-localization calibrate" in err


def test_replay_reports_a_missing_topic(campus_map, tmp_path, capsys):
    bag = write_bag(tmp_path / "bag", [campus_map.image(0)], "/cam/image_raw", storage="sqlite3")
    rc = cli(["replay", "--bag", str(bag), "--image-topic", "/nope", "--map", str(campus_map.map_dir),
              "--checkpoint", str(campus_map.checkpoint), "--config", str(campus_map.config)])
    assert rc == 2 and "/nope" in capsys.readouterr().err
