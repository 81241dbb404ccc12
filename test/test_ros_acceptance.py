"""Temporal consistency and sequence scoring behave the same through the real node (real DDS) and
``replay`` on the same frames: campus_loop_72 in ``loop_closure`` mode with ``consistency`` 2 and
``sequence_length`` 5, score threshold 0 (every proposal is confident, so only the consistency rule
decides), each frame answered before the next is sent (no frame dropped)."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from ros_fixtures import running_node
from ros_helpers import node_report
from vlad_localization.ros.messages import parse_candidates

S = 10**9
CAM = "/acceptance_cam/image_raw"
NAME = "vlad_acceptance"
T0 = 100  # node frame i is stamped T0 + i s; replay's (--fps 1) i s
RULE = {"score_threshold": 0.0, "min_time_gap_s": 30.0, "consistency": 2, "consistency_window_s": 3.0,
        "sequence_length": 5}


@pytest.fixture(scope="module")
def both_runs(node_setup, datasets_dir, tmp_path_factory):
    """(node: candidate map ids per frame, closures, diagnostics), (replay: records) on the 72 frames."""
    from vlad_localization.cli.main import main as cli
    from vlad_localization.images.io import load_rgb

    work = tmp_path_factory.mktemp("acceptance")
    images = datasets_dir / "campus_loop_72"
    out = work / "replay.jsonl"
    rc = cli(["replay", "--images", str(images), "--fps", "1", "--mode", "loop_closure",
              "--checkpoint", str(node_setup.checkpoint), "--config", str(node_setup.config),
              "--score-threshold", "0", "--min-gap", "30", "--consistency", "2", "--consistency-window", "3",
              "--sequence-length", "5", "--out", str(out)])
    assert rc == 0
    replay = [json.loads(line) for line in out.read_text().splitlines()]
    log = work / "node.log"
    ids, stamps = {}, {}
    with running_node(node_setup, log, NAME, (CAM,), mode="loop_closure", **RULE) as client:
        for i in range(72):
            client.publish(load_rgb(images / f"image_{i}.png"), (T0 + i) * S)
            rec = client.wait_candidates((T0 + i) * S, 60.0)
            assert rec is not None, f"no ~/candidates for frame {i}:\n{log.read_text()[-2000:]}"
            rows = parse_candidates(rec.msg)
            ids[i] = [int(r["map_id"]) for r in rows]
            stamps[i] = [round(r["map_stamp"]) - T0 for r in rows]

        diagnostics = node_report(client, NAME, lambda values: values.get("processed") == "72", 10.0)
        assert diagnostics, "the node never reported all 72 frames processed"
        closures = [(round(q) - T0, round(m) - T0) for q, m in (r.msg.data for r in client.get("loop_closure"))]
    return (ids, stamps, closures, diagnostics), replay


def test_node_and_replay_rank_the_same_candidates(both_runs):
    (ids, stamps, _, _), replay = both_runs
    for i, record in enumerate(replay):
        assert ids[i] == [c["map_id"] for c in record["candidates"]], i
        assert stamps[i] == [round(c["map_stamp"]) for c in record["candidates"]], i
        if record["candidates"]:
            assert all(c["sequence_similarity"] is not None for c in record["candidates"])


def test_node_and_replay_accept_and_hold_back_the_same_frames(both_runs):
    (_, _, closures, diagnostics), replay = both_runs
    replayed = [tuple(round(t) for t in r["loop_closure"]) for r in replay if r["loop_closure"]]
    assert closures == replayed
    counts = Counter(r["decision"]["status"] for r in replay)
    assert counts["inconsistent"] > 0, counts  # consistency held proposals back on this run
    for status, n in counts.items():
        assert diagnostics.get(f"decisions[{status}]") == str(n), (status, n, diagnostics)
    for r in replay:  # every accepted frame had an agreeing proposal in the frame before
        if r["decision"]["status"] == "accepted":
            assert r["decision"]["consistent_frames"] >= 2
