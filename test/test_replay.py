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
    assert "loop closure t=71.000 -> map keyframe" in err and ": 3 frames;" in err
    # localize mode (the config's default): the prebuilt map only, no keyframe of the run
    assert all(c["source"] == 0 for r in records for c in r["candidates"]) and all(r["keyframe"] is None for r in records)


def test_replay_reports_a_missing_topic(campus_map, tmp_path, capsys):
    bag = write_bag(tmp_path / "bag", [campus_map.image(0)], "/cam/image_raw", storage="sqlite3")
    rc = cli(["replay", "--bag", str(bag), "--image-topic", "/nope", "--map", str(campus_map.map_dir),
              "--checkpoint", str(campus_map.checkpoint), "--config", str(campus_map.config)])
    assert rc == 2 and "/nope" in capsys.readouterr().err
