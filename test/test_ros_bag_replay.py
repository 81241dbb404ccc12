"""Bags (written with rosbags: .mcap raw rgb8 and .db3 compressed JPEG) replayed into the real node
with their timing and /clock (the package's mini player), the node on use_sim_time: the expected
loop closure of campus_loop_72 (image_71 -> image_0 / image_1) is published, stamped in bag time."""
from __future__ import annotations


import pytest

from ros_fixtures import running_node
from vlad_localization.images.bag import write_bag
from vlad_localization.images.frames import Frame
from vlad_localization.loop_closure import score_of, select_loop_closure
from vlad_localization.ros.client import wait_for
from vlad_localization.ros.diagnostics import parse_diagnostics
from vlad_localization.ros.messages import parse_candidates

S = 10**9
NAME = "vlad_bag_node"
RAW, COMPRESSED = "/bag_cam/image_raw", "/bag_cam/image_raw/compressed"
FRAMES = range(64, 72)  # the end of the loop: 64..71 s, image_71 closes the loop with image_0
RATE = 4.0  # replay speed (the newest frame of a burst is always processed)


@pytest.fixture(scope="module")
def bags(campus_map, tmp_path_factory):
    out = tmp_path_factory.mktemp("bags")
    frames = [Frame(stamp_ns=i * S, frame_id="camera", image=campus_map.image(i)) for i in FRAMES]
    return {
        "mcap": write_bag(out / "raw_mcap", frames, RAW, encoding="mono8", storage="mcap"),
        "db3": write_bag(out / "jpeg_db3", frames, COMPRESSED, compressed=True, storage="sqlite3"),
    }


@pytest.fixture(scope="module")
def sim_node(campus_map, tmp_path_factory):
    log = tmp_path_factory.mktemp("bagnode") / "node.log"
    with running_node(campus_map, log, NAME, (RAW, COMPRESSED), use_sim_time=True,
                      score_threshold=0.0, min_time_gap_s=30.0) as client:
        yield client


@pytest.mark.parametrize("storage,camera", [("mcap", 0), ("db3", 1)])
def test_bag_replay_with_clock_gives_the_loop_closure(sim_node, bags, campus_map, storage, camera):
    from vlad_localization.ros.player import play_bag

    client = sim_node
    client.clear()
    sent = play_bag(client.node, bags[storage], rate=RATE)
    assert sent == len(FRAMES)
    last = client.wait_candidates(71 * S, 30, camera)
    assert last is not None, "the last frame of the bag (image_71) was not answered"
    rows = parse_candidates(last.msg)
    assert rows[0]["map_stamp"] == 71 and rows[0]["camera"] == camera
    closure = wait_for(lambda: [list(r.msg.data) for r in client.get("loop_closure") if r.msg.data[0] == 71.0], 3)
    assert closure and len(closure) == 1 and campus_map.is_true_loop_closure(*closure[0]), closure
    for rec in client.get("candidates"):  # every answered frame: stamps are the bag's, decision = the rule
        rows = parse_candidates(rec.msg)
        assert rows[0]["query_stamp"] in FRAMES
    diag = wait_for(lambda: [r for r in client.get("diagnostics") if parse_diagnostics(r.msg, f"{NAME}: loop closure")], 3)
    assert diag and 60 <= diag[-1].msg.header.stamp.sec <= 72  # /diagnostics stamped with sim time


def test_loop_closure_rule_matches_published_rows(sim_node):
    """Each published ~/loop_closure equals the shared rule applied to the same ~/candidates rows."""
    client = sim_node
    for rec in client.get("candidates"):
        rows = parse_candidates(rec.msg)

        class Row:  # the rule reads stamp_ns and score (the fused score when computed, else the patch score)
            def __init__(self, r):
                self.stamp_ns = round(r["map_stamp"] * S)
                self.score = score_of(r["patch_score"], r["fused_score"])

        decided = select_loop_closure(round(rows[0]["query_stamp"] * S), [Row(r) for r in rows], 0.0, 30.0)
        published = [list(r.msg.data) for r in client.get("loop_closure") if r.msg.data[0] == rows[0]["query_stamp"]]
        assert published == ([[decided.t_query, decided.t_match]] if decided else [])
