"""Online loop closure through the real node over real DDS: campus_loop_72 streamed as images with
its poses on an odometry topic in ``loop_closure`` mode (no prebuilt map searched): the revisit
71 -> 0/1 is published, nothing inside the time gap; ``~/save_map`` writes the run, and a second node
in ``localize`` mode on the saved map returns the same keyframes for the same frames."""
from __future__ import annotations

import math

import numpy as np
import pytest
from std_srvs.srv import Trigger

from ros_fixtures import running_node
from ros_helpers import report_after_answers
from vlad_localization.ros.messages import parse_candidates

S = 10**9
CAM = "/online_cam/image_raw"
ODOM = "/online_odom"
NAME = "vlad_online"
ANSWER_S = 30.0
T0 = 100  # frame i is stamped T0 + i s (a zero stamp would be replaced by the receive time)


def _yaw_quaternion(yaw: float):
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


@pytest.fixture(scope="module")
def online_run(campus_map, tmp_path_factory):
    """Stream the 72 campus frames (stamps T0 + i s) with odometry at 10 Hz; returns the candidates
    rows per frame, the closures (as frame indices), the last diagnostics and the saved map path."""
    work = tmp_path_factory.mktemp("online")
    saved = work / "run_map"
    poses = np.loadtxt(campus_map.images / "data.csv", delimiter=",", usecols=(1, 2, 3))
    rows, log = {}, work / "node.log"
    with running_node(campus_map, log, NAME, (CAM,), odom_topic=ODOM, mode="loop_closure",
                      score_threshold=0.0, min_time_gap_s=30.0, min_travel_m=20.0,
                      save_map_path=str(saved)) as client:
        for i in range(72):
            for k in range(10):  # odometry from i - 0.5 s to i + 0.4 s, linearly between keyframe poses
                t = i - 0.5 + 0.1 * k
                a, b = (max(0, min(71, math.floor(t))), max(0, min(71, math.floor(t) + 1)))
                f = t - math.floor(t)
                x, y = (1 - f) * poses[a, :2] + f * poses[b, :2]
                client.publish_odometry(round((T0 + t) * S), (x, y, 0.0), _yaw_quaternion(poses[a, 2]))
            client.publish(campus_map.image(i), (T0 + i) * S)
            rec = client.wait_candidates((T0 + i) * S, ANSWER_S)
            assert rec is not None, f"no ~/candidates for frame {i}:\n{log.read_text()[-2000:]}"
            rows[i] = parse_candidates(rec.msg)
        diagnostics = report_after_answers(client, NAME)  # once the node counted the 72 frames
        response = client.call(Trigger, "save_map")
        closures = [[q - T0, m - T0] for q, m in (r.msg.data for r in client.get("loop_closure"))]
    assert response is not None and response.success, response
    return rows, closures, diagnostics, saved, poses


def test_the_revisit_is_published_with_its_matched_stamp(online_run, campus_map):
    rows, closures, _, _, _ = online_run
    at_71 = [c for c in closures if c[0] == 71.0]
    assert len(at_71) == 1 and campus_map.is_true_loop_closure(*at_71[0]), at_71  # image_0 or image_1
    assert rows[71][0]["source"] == 1  # this run's keyframes, not a prebuilt map
    assert all(abs(q - m) >= 30.0 - 1e-6 for q, m in closures)  # float seconds of integer-ns stamps


def test_recent_keyframes_are_never_candidates(online_run):
    rows, _, _, _, poses = online_run
    travel = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(poses[:, :2], axis=0).T))])
    for i, cands in rows.items():
        for c in cands:
            j = round(c["map_stamp"]) - T0
            assert i - j >= 30 and travel[i] - travel[j] >= 20.0 - 0.05, (i, j)  # odometry interpolated


def test_diagnostics_report_the_runs_keyframes_and_bytes(online_run):
    _, _, diagnostics, _, _ = online_run
    assert diagnostics["mode"] == "loop_closure" and diagnostics["run_keyframes"] == "72"
    assert int(diagnostics["run_bytes"]) > 72 * 176 * 128 * 2  # float16 patches at least
    assert diagnostics["map_size"] == "0"


def test_saved_run_serves_a_localize_node_with_the_same_keyframes(online_run, campus_map, tmp_path):
    """The saved map holds the run's keyframes with their stamps and odometry poses: a second node
    in localize mode on it finds, for frames of the run, the keyframe each frame became."""
    _, _, _, saved, poses = online_run
    from vlad_localization.mapdb import MapDatabase

    with MapDatabase.open(saved) as db:
        assert db.size == 72
        assert all(k.position is not None for k in db.keyframes(list(range(72))))  # every frame had odometry
        kf = db.keyframe(40)
        assert kf.stamp_ns == (T0 + 40) * S and np.allclose(kf.position[:2], poses[40, :2], atol=1e-6)
    with running_node(campus_map, tmp_path / "node2.log", "vlad_saved", ("/saved_cam/image_raw",),
                      mode="localize", map_path=str(saved)) as client:
        for i in (3, 40, 71):
            client.publish(campus_map.image(i), (1000 + i) * S)
            rec = client.wait_candidates((1000 + i) * S, ANSWER_S)
            assert rec is not None
            top = parse_candidates(rec.msg)[0]
            assert (top["map_stamp"], top["map_id"], top["source"]) == (T0 + i, i, 0)
