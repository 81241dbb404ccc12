"""The real node in its own process over real DDS, on a map of campus_loop_72 (one node for the
module): retrieval, loop closures, stamps, poses, diagnostics, bad input, match image, reload."""
from __future__ import annotations

import math
import re
from collections import Counter

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from ros_fixtures import running_node
from ros_helpers import changed_parameters, report_after_answers
from vlad_localization.images.convert import rgb_to_compressed
from vlad_localization.loop_closure import score_of
from vlad_localization.ros.client import wait_for
from vlad_localization.ros.diagnostics import parse_diagnostics
from vlad_localization.ros.messages import parse_candidates, stamp_to_ns

S = 10**9
MS = 10**6  # answers are matched to queries by stamp to 1 us (float64 s): keep queries >= 1 ms apart
NAME = "vlad_test_node"
RAW, COMPRESSED = "/test_cam/image_raw", "/test_cam/image_raw/compressed"
STATUS = f"{NAME}: loop closure"
ANSWER_S = 30.0


@pytest.fixture(scope="module")
def node(campus_map, tmp_path_factory):
    """(client, log path): the node subscribed to a raw and a compressed camera."""
    log = tmp_path_factory.mktemp("node") / "node.log"
    with running_node(campus_map, log, NAME, (RAW, COMPRESSED), score_threshold=0.0, min_time_gap_s=30.0) as client:
        yield client, log, campus_map


def ask(client, rgb, stamp_ns, camera=0):
    client.publish(rgb, stamp_ns, camera)
    rec = client.wait_candidates(stamp_ns, ANSWER_S, camera)
    assert rec is not None, f"no ~/candidates for the frame stamped {stamp_ns} ns"
    return parse_candidates(rec.msg)


def decisions(report) -> dict[str, int]:
    """The loop-closure rule's decisions counted on /diagnostics, by status."""
    return {k[len("decisions["):-1]: int(v) for k, v in report.items() if k.startswith("decisions[")}


def closures_for(client, stamp_ns):
    return [list(r.msg.data) for r in client.get("loop_closure") if abs(r.msg.data[0] - stamp_ns / S) < 1e-6]


@pytest.mark.parametrize("index", [5, 33, 64])
def test_the_right_keyframe_comes_first(node, index):
    client, _, campus = node
    rows = ask(client, campus.image(index), index * S)
    assert rows[0]["map_stamp"] == index  # keyframe i is stamped i s
    assert rows[0]["camera"] == 0 and all(r["query_stamp"] == index for r in rows)
    scored = [score_of(r["patch_score"], r["fused_score"]) for r in rows if not math.isnan(r["patch_score"])]
    assert score_of(rows[0]["patch_score"], rows[0]["fused_score"]) == max(scored)  # NaN: not re-ranked


def test_compressed_camera_answers_with_its_index(node):
    client, _, campus = node
    rows = ask(client, campus.image(20), 20 * S + 5 * MS, camera=1)
    assert rows[0]["map_stamp"] == 20 and rows[0]["camera"] == 1


def test_loop_closure_fires_for_the_real_revisit_only_above_threshold_and_outside_the_gap(node):
    client, _, campus = node
    # image_71 revisits image_0: keyframe 71 itself (0 s apart) is excluded by the 30 s gap
    rows = ask(client, campus.image(71), 71 * S)
    assert rows[0]["map_stamp"] == 71
    closure = wait_for(lambda: closures_for(client, 71 * S), 2)
    assert closure and len(closure) == 1 and closure[0][0] == 71.0
    assert campus.is_true_loop_closure(*closure[0]), closure  # image_0 (5.5 m) or image_1 (8.6 m)
    score = next(score_of(r["patch_score"], r["fused_score"]) for r in rows if r["map_stamp"] == closure[0][1])

    before = report_after_answers(client, NAME)
    with changed_parameters(client, score_threshold=float(score) + 1e-3):  # just above its score
        ask(client, campus.image(71), 71 * S + 1 * MS)
    with changed_parameters(client, min_time_gap_s=100.0):  # nothing 100 s away
        ask(client, campus.image(71), 71 * S + 2 * MS)
    after = report_after_answers(client, NAME)  # the node counted both frames (and published all they did)
    decided = Counter(decisions(after))
    decided.subtract(decisions(before))
    assert +decided == Counter({"below_threshold": 1, "no_candidate": 1}), decided  # the rule's decision per frame
    assert after["loop_closures"] == before["loop_closures"]
    assert closures_for(client, 71 * S + 1 * MS) == [] and closures_for(client, 71 * S + 2 * MS) == []


def test_outputs_carry_the_input_stamp_and_candidate_poses(node):
    client, _, campus = node
    stamp = 1_700_000_040 * S + 123_456_789
    rows = ask(client, campus.image(40), stamp)
    assert abs(rows[0]["query_stamp"] - stamp / S) < 1e-6
    poses = wait_for(lambda: [r.msg for r in client.get("candidate_poses")
                              if (r.msg.header.stamp.sec, r.msg.header.stamp.nanosec) == (1_700_000_040, 123_456_789)], 5)
    assert poses and poses[0].header.frame_id == "map" and len(poses[0].poses) == len(rows)
    x, y = np.loadtxt(campus.images / "data.csv", delimiter=",", usecols=(1, 2))[40]
    assert (poses[0].poses[0].position.x, poses[0].poses[0].position.y) == pytest.approx((x, y))
    assert closures_for(client, stamp)[0][0] == pytest.approx(stamp / S, abs=1e-6)


def _bad_inputs(campus):
    jpeg = rgb_to_compressed(campus.image(3))[1]
    huge = cv2.imencode(".jpg", np.zeros((6000, 8000), np.uint8))[1].tobytes()
    return [  # (reason, camera, message)
        ("data_too_short", 0, Image(height=240, width=426, encoding="mono8", step=426, data=b"\0" * 1000)),
        ("step_too_small", 0, Image(height=4, width=4, encoding="rgb8", step=8, data=b"\0" * 48)),
        ("unknown_encoding", 0, Image(height=4, width=4, encoding="weird16", step=8, data=b"\0" * 32)),
        ("empty_image", 0, Image(height=0, width=0, encoding="rgb8", step=0, data=b"")),
        ("decode_failed", 1, CompressedImage(format="jpeg", data=jpeg[: len(jpeg) // 3] + b"\0" * 64)),
        ("decode_failed", 1, CompressedImage(format="jpeg", data=b"this is not a jpeg")),
        ("too_large", 1, CompressedImage(format="jpeg", data=huge)),  # a real 8000x6000 JPEG
        ("too_large", 0, Image(height=6000, width=8000, encoding="mono8", step=8000, data=b"\0" * 64)),
    ]


def test_bad_input_is_rejected_counted_and_the_next_frame_answered(node):
    client, log, campus = node
    expected = {}

    def counters():
        for rec in reversed(client.get("diagnostics")):
            values = parse_diagnostics(rec.msg, STATUS)
            if values and all(values.get(f"rejected[{r}]") == str(n) for r, n in expected.items()):
                return values

    for i, (reason, camera, msg) in enumerate(_bad_inputs(campus)):
        client.publish(None, 500 * S + i * 10 * MS, camera, msg=msg)
        expected[reason] = expected.get(reason, 0) + 1
        # counted (diagnostics, 1 Hz) before the next frame, which would otherwise replace it unseen
        assert wait_for(counters, 10), f"diagnostics did not count {expected}"
        rows = ask(client, campus.image(12), 500 * S + (i * 10 + 1) * MS, camera)  # still answered
        assert rows[0]["map_stamp"] == 12
    text = log.read_text()
    for reason in expected:  # a clear warning per reason (throttled per reason)
        assert re.search(rf"WARN.*rejected a frame from /test_cam.*{reason}", text), reason
    assert len(re.findall(r"decode_failed", text)) == 1  # the second one within 5 s was throttled


def test_diagnostics_report_rates_latency_map_and_device(node):
    client, _, _ = node
    rec = wait_for(lambda: [r for r in client.get("diagnostics") if parse_diagnostics(r.msg, STATUS)], 5)
    values = parse_diagnostics(rec[-1].msg, STATUS)
    assert values["map_size"] == "72" and values["device"].startswith("cpu") and values["state"] == "active"
    for key in (f"input_rate_hz[{RAW}]", f"dropped_busy[{COMPRESSED}]", "processed_rate_hz",
                "latency_encode_ms", "latency_search_ms", "latency_rerank_ms", "gpu_memory_mb"):
        assert key in values, key
    assert int(values["processed"]) > 0


def test_match_image_while_subscribed(node):
    client, _, campus = node  # (not computed without a subscriber: test_ros_units, fake localizer)
    client.subscribe("match_image", Image, f"/{NAME}/match_image", depth=5)
    assert wait_for(lambda: client.node.count_publishers(f"/{NAME}/match_image"), 5)

    def match_images(stamp_ns):  # published right after the frame's ~/candidates
        return wait_for(lambda: [r.msg for r in client.get("match_image")
                                 if stamp_to_ns(r.msg.header.stamp) == stamp_ns], 1)

    for attempt in range(10):  # until the node has discovered the new subscriber (it then draws every frame)
        stamp = 50 * S + (7 + attempt) * MS
        rows = ask(client, campus.image(50), stamp)
        img = match_images(stamp)
        if img:
            break
    assert img and img[0].encoding == "rgb8" and img[0].width == 2 * 320 and img[0].height == 240
    assert rows[0]["map_stamp"] == 50


def test_reload_map_service(node):
    client, _, campus = node
    result = client.call(Trigger, "reload_map")
    assert result.success and "72 keyframes" in result.message
    assert ask(client, campus.image(7), 7 * S + 9 * MS)[0]["map_stamp"] == 7
