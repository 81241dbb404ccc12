"""Unit tests of the ROS adapter pieces: loop-closure rule, newest-frame worker, message layout,
parameter file, and the node in-process with a fake localizer (real rclpy, no model)."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import yaml

from ros_helpers import Collector, FakeCandidate, FakeDetector, bare_node
from vlad_localization.loop_closure import select_loop_closure
from vlad_localization.mapdb import Store
from vlad_localization.ros.client import PARAMS_FILE, wait_for
from vlad_localization.ros.params import PARAMETERS, markdown_table
from vlad_localization.ros.worker import LatestFrameWorker

S = 10**9


def test_loop_closure_rule_judges_the_best_ranked_revisit():
    cands = [FakeCandidate(0, 95 * S, 0.9), FakeCandidate(1, 10 * S, 0.2), FakeCandidate(2, 20 * S, 0.6),
             FakeCandidate(3, None, 0.99)]
    # the proposal is rank 1 (rank 0 is inside the time gap); it is below 0.5, and rank 2 is not asked
    assert select_loop_closure(100 * S, cands, score_threshold=0.5, min_time_gap_s=30) is None
    lc = select_loop_closure(100 * S, cands, score_threshold=0.2, min_time_gap_s=30)
    assert (lc.rank, lc.query_stamp_ns, lc.match_stamp_ns) == (1, 100 * S, 10 * S)
    assert select_loop_closure(100 * S, cands, 0.95, 0) is None  # only the stamp-less one is that good
    assert select_loop_closure(100 * S, cands, 0.5, 0).rank == 0
    assert select_loop_closure(100 * S, [], 0.0, 0) is None
    assert select_loop_closure(100 * S, [FakeCandidate(0, 0, float("nan"))], 0.0, 0) is None  # not re-ranked


def test_worker_processes_newest_frame_only_and_counts_drops():
    started, release, seen = threading.Event(), threading.Event(), []

    def handle(camera, item):
        seen.append((camera, item))
        started.set()
        release.wait(5)

    worker = LatestFrameWorker(2, handle, on_error=lambda exc: None)
    assert not worker.put(0, "a")
    assert started.wait(5)  # worker busy with "a"
    replaced = [worker.put(0, f"f{i}") for i in range(1000)] + [worker.put(1, "cam1")]
    assert sum(replaced) == 999  # all but the newest dropped; one slot per camera
    release.set()
    assert wait_for(worker.idle, 5)
    assert seen == [(0, "a"), (1, "cam1"), (0, "f999")]  # round-robin over cameras
    assert worker.stop(1.0)


def test_worker_survives_handler_errors():
    errors, done = [], threading.Event()

    def handle(camera, item):
        if item == "bad":
            raise RuntimeError("boom")
        done.set()

    worker = LatestFrameWorker(1, handle, on_error=errors.append)
    worker.put(0, "bad")
    wait_for(lambda: errors, 5)
    worker.put(0, "good")
    assert done.wait(5) and len(errors) == 1
    worker.stop(1.0)


def test_loop_closure_edge_message_round_trips():
    import cv2

    from vlad_localization.ros.messages import EDGE_COLUMNS, loop_closure_edge_msg, parse_loop_closure_edges
    from vlad_localization.verification import RelativePose

    cov = np.arange(36.0).reshape(6, 6)
    pose = RelativePose(cv2.Rodrigues(np.array([0.1, 0.2, -0.3]))[0], np.array([0.4, -0.1, 0.2]), True, 321, cov, "ok")
    msg = loop_closure_edge_msg(1_403_715_288_312_143_104, 1_403_715_386_762_142_976, 17, "run", pose, 0.42)
    d0, d1 = msg.layout.dim
    assert (d0.label, d0.size, d0.stride) == ("edge", 1, 51) and d1.size == 51 == len(EDGE_COLUMNS)
    assert d1.label.split(",")[:14] == ["query_stamp", "match_stamp", "map_id", "map", "tx", "ty", "tz", "qx", "qy",
                                         "qz", "qw", "metric", "score", "inliers"]
    (edge,) = parse_loop_closure_edges(msg)
    assert edge["query_stamp"] == pytest.approx(1403715288.312143, abs=1e-6)
    assert edge["match_stamp"] == pytest.approx(1403715386.762143, abs=1e-6)
    assert (edge["map_id"], edge["map"], edge["metric"], edge["inliers"]) == (17, "run", True, 321)
    assert edge["score"] == 0.42
    np.testing.assert_allclose(edge["translation"], pose.translation)
    np.testing.assert_allclose(edge["quaternion"], pose.quaternion)
    np.testing.assert_array_equal(edge["covariance"], cov)
    assert edge["refined"] and d1.label.split(",")[-1] == "refined"  # refine None (not said): SIFT, as before
    pose.refine = "none"  # a map keyframe without its image: the patch keypoints alone
    assert parse_loop_closure_edges(loop_closure_edge_msg(1, 2, 3, "prebuilt", pose, 0.5))[0]["refined"] is False
    with pytest.raises(ValueError, match="not a loop-closure edge"):
        loop_closure_edge_msg(1, 2, 3, "prebuilt", RelativePose.rejected("planar"), 0.5)
    with pytest.raises(ValueError, match="store 'other'"):
        loop_closure_edge_msg(1, 2, 3, "other", pose, 0.5)


def test_camera_info_gives_the_camera_model():
    from sensor_msgs.msg import CameraInfo

    from vlad_localization.ros.messages import camera_from_info

    info = CameraInfo(height=480, width=752, distortion_model="plumb_bob",
                      d=[-0.2834, 0.07396, 0.0001936, 0.0000176, 0.0],
                      k=[458.654, 0.0, 367.215, 0.0, 457.296, 248.375, 0.0, 0.0, 1.0])
    camera, hw = camera_from_info(info)
    assert hw == (480, 752) and (camera.fx, camera.fy, camera.cx, camera.cy) == (458.654, 457.296, 367.215, 248.375)
    assert camera.distortion == (-0.2834, 0.07396, 0.0001936, 0.0000176, 0.0)
    pixel = np.array([[700.0, 450.0]])
    assert np.linalg.norm(camera.normalized(pixel) - [(700 - 367.215) / 458.654, (450 - 248.375) / 457.296]) > 0.05
    with pytest.raises(ValueError, match="equidistant"):
        camera_from_info(CameraInfo(distortion_model="equidistant", k=info.k, d=[0.0] * 4))
    with pytest.raises(ValueError, match="not calibrated"):
        camera_from_info(CameraInfo(distortion_model="plumb_bob"))


def test_candidates_message_layout_round_trips():
    from vlad_localization.ros.messages import CANDIDATE_COLUMNS, candidates_msg, candidates_query, parse_candidates

    cands = [FakeCandidate(7, 3 * S, 0.8, inliers=12, store=Store.RUN, fused_score=0.95), FakeCandidate(2, None, 0.1)]
    msg = candidates_msg(5 * S + 250_000_000, 1, cands)
    d0, d1 = msg.layout.dim
    assert (d0.label, d0.size, d0.stride) == ("candidate@5.250000000/1", 2, 18)
    assert candidates_query(msg) == (5.25, 1) and candidates_query(candidates_msg(7 * S, 0, [])) == (7.0, 0)
    assert (d1.label, d1.size, d1.stride) == (",".join(CANDIDATE_COLUMNS), 9, 9)
    rows = parse_candidates(msg)
    assert rows[0] == {"query_stamp": 5.25, "camera": 1.0, "map_id": 7.0, "map_stamp": 3.0,
                       "global_similarity": 0.9, "patch_score": 0.8, "inliers": 12.0, "source": 1.0,
                       "fused_score": 0.95}
    assert math.isnan(rows[1]["map_stamp"]) and math.isnan(rows[1]["fused_score"]) and rows[1]["source"] == 0
    empty = candidates_msg(S, 0, [])
    assert empty.layout.dim[0].size == 0 and list(empty.data) == [] and parse_candidates(empty) == []


def test_every_topic_writes_a_stamp_as_the_same_float():
    """~/candidates, ~/loop_closure, ~/loop_closure_edges and replay's JSON give one stamp the same
    float64 seconds (a backend matches frames across them by equality): stamps where ns * 1e-9 and
    ns / 1e9 differ in the last bit included."""
    from vlad_localization.images.frames import seconds
    from vlad_localization.ros.messages import candidates_msg, loop_closure_edge_msg, loop_closure_msg, parse_candidates
    from vlad_localization.ros.messages import parse_loop_closure_edges

    from vlad_localization.verification import RelativePose

    pose = RelativePose(np.eye(3), np.array([0.0, 0.0, 1.0]), False, 50, np.eye(6), "ok")
    stamps = [1_700_000_000_123_456_789 + 7919 * i for i in range(200)]
    assert any(ns * 1e-9 != ns / 1e9 for ns in stamps)  # the case this guards
    for ns in stamps:
        query = parse_candidates(candidates_msg(ns, 0, [FakeCandidate(1, ns - 40 * S, 0.5)]))[0]
        closure = list(loop_closure_msg(ns, ns - 40 * S).data)
        edge = parse_loop_closure_edges(loop_closure_edge_msg(ns, ns - 40 * S, 1, Store.RUN, pose, 0.5))[0]
        assert query["query_stamp"] == closure[0] == edge["query_stamp"] == seconds(ns)
        assert query["map_stamp"] == closure[1] == edge["match_stamp"] == seconds(ns - 40 * S)


def test_params_file_declares_every_parameter_with_its_default():
    values = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    assert list(values) == [p.name for p in PARAMETERS]
    for p in PARAMETERS:
        assert values[p.name] == p.default, p.name
        assert p.description.strip()
    assert "| `score_threshold` |" in markdown_table()


# -- the node in-process with a fake localizer ------------------------------------------------------
@pytest.fixture
def fake_node(ros_domain_id):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from vlad_localization.ros.node import VladLocalizationNode

    rclpy.init()
    fake = FakeDetector(delay_s=0.05)
    node = VladLocalizationNode(  # inference on a thread of this process: the test inspects the fake
        detector_factory=lambda cfg, *a: setattr(fake, "config", cfg) or fake, isolate_inference=False,
        parameter_overrides=[
            Parameter("map_path", value="fake"), Parameter("checkpoint", value="fake"),
            Parameter("image_topics", value=["/cam0/image_raw", "/cam1/image/compressed"]),
            Parameter("qos_reliability", value="reliable"),
            Parameter("min_time_gap_s", value=50.0), Parameter("score_threshold", value=0.3)])
    client = rclpy.create_node("fake_client")
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.add_node(client)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node, client, fake
    node.stop()
    executor.shutdown()
    node.destroy_node()
    client.destroy_node()
    rclpy.try_shutdown()
    thread.join(2)


def test_node_with_fake_localizer_publishes_and_counts(fake_node):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Float64MultiArray

    from vlad_localization.images.convert import rgb_to_compressed, rgb_to_image_fields
    from vlad_localization.ros.messages import ns_to_stamp, parse_candidates

    node, client, fake = fake_node
    assert node.trigger_configure().name == "SUCCESS"
    assert node.trigger_activate().name == "SUCCESS"
    got = Collector()
    client.create_subscription(Float64MultiArray, "/vlad_localization/candidates", got.cb("cand"), 10)
    client.create_subscription(Float64MultiArray, "/vlad_localization/loop_closure", got.cb("lc"), 10)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    raw = client.create_publisher(Image, "/cam0/image_raw", qos)
    comp = client.create_publisher(CompressedImage, "/cam1/image/compressed", qos)
    assert wait_for(lambda: raw.get_subscription_count() and comp.get_subscription_count(), 5)
    time.sleep(0.3)

    img = Image(**rgb_to_image_fields(np.full((8, 8, 3), 2, np.uint8)))  # keyframe 2, t=200 s
    img.header.stamp = ns_to_stamp(260 * S)
    raw.publish(img)
    assert wait_for(lambda: got.get("cand"), 5)
    rows = parse_candidates(got.get("cand")[0])
    assert rows[0]["map_id"] == 2 and rows[0]["query_stamp"] == 260 and rows[0]["camera"] == 0
    assert wait_for(lambda: got.get("lc"), 2) and list(got.get("lc")[0].data) == [260.0, 200.0]

    fmt, data = rgb_to_compressed(np.full((8, 8, 3), 1, np.uint8))  # keyframe 1, t=100: within gap
    cimg = CompressedImage(format=fmt, data=data)
    cimg.header.stamp = ns_to_stamp(120 * S)
    comp.publish(cimg)
    assert wait_for(lambda: len(got.get("cand")) == 2, 5)
    rows = parse_candidates(got.get("cand")[1])
    assert rows[0]["map_id"] == 1 and rows[0]["camera"] == 1
    assert wait_for(lambda: node.stats.processed == 2, 5)  # counted after its messages were published
    assert node.stats.loop_closures == 1 and len(got.get("lc")) == 1  # |120 - 100| < 50 s

    bad = Image(height=4, width=4, encoding="rgb8", step=12, data=b"\0" * 10)
    raw.publish(bad)
    assert wait_for(lambda: node.stats.rejected.get("data_too_short"), 5)

    for i in range(30):  # faster than the 50 ms fake model: newest-only, the rest dropped
        img.header.stamp = ns_to_stamp((300 + i) * S)
        raw.publish(img)
    assert wait_for(lambda: parse_candidates(got.get("cand")[-1])[0]["query_stamp"] == 329, 5)
    st = node.stats  # depth-1 subscription + one slot: most of the burst never reaches the model
    assert st.processed < 20
    assert st.processed + st.dropped[0] + sum(st.rejected.values()) == st.received[0] + st.received[1]

    assert fake.map.thumbnails == 0  # nobody subscribed to ~/match_image: never computed

    img.header.stamp = ns_to_stamp(0)  # an unstamped driver: the receive time on the node's clock
    count = len(got.get("cand"))
    raw.publish(img)
    assert wait_for(lambda: len(got.get("cand")) > count, 5)
    assert abs(parse_candidates(got.get("cand")[-1])[0]["query_stamp"] - time.time()) < 5

    assert node.trigger_deactivate().name == "SUCCESS"
    assert not fake.released  # CPU: kept loaded
    assert node.trigger_cleanup().name == "SUCCESS" and fake.released


def test_stats_snapshot_reports_rates_counts_and_latency():
    from vlad_localization.ros.diagnostics import NodeStats, diagnostic_array, parse_diagnostics

    stats = NodeStats(["/a", "/b"])
    for _ in range(3):
        stats.count("received", 0)
    stats.count("dropped", 0)
    stats.count("rejected", "decode_failed")
    stats.frame_done({"encode_ms": 10.0, "search_ms": 1.0, "rerank_ms": 4.0, "total_ms": 16.0}, True)
    values = stats.snapshot()
    assert values["received[/a]"] == "3" and values["dropped_busy[/a]"] == "1" and values["received[/b]"] == "0"
    assert values["rejected[decode_failed]"] == "1" and values["rejected_last_period"] == "1"
    assert values["latency_encode_ms"] == "10.0" and values["loop_closures"] == "1"
    assert float(values["input_rate_hz[/a]"]) > 0
    assert stats.snapshot()["rejected_last_period"] == "0"  # rates and recent counts are per period
    from builtin_interfaces.msg import Time

    array = diagnostic_array(Time(sec=5), "n: loop closure", b"\x00", "ok", values)
    assert parse_diagnostics(array, "n: loop closure")["processed"] == "1"


def test_parameters_accept_natural_yaml_types_and_refuse_bad_values(rclpy_context):
    from rclpy.parameter import Parameter

    node = bare_node({"compressed": True, "max_rate_hz": 5, "score_threshold": "high", "top_k": "many",
                      "qos_reliability": "sometimes", "matcher": "sift"})
    try:
        assert node.param("compressed") == "true"  # a YAML bool, as the README writes it
        assert node.param("max_rate_hz") == 5.0 and isinstance(node.param("max_rate_hz"), float)
        # wrong types and values: an error naming the parameter, the default kept, the node alive
        assert node.param("score_threshold") == -1.0 and node.param("top_k") == 0
        assert node.param("qos_reliability") == "best_effort" and node.param("matcher") == ""
        assert not node.set_parameters([Parameter("min_time_gap_s", value=-1.0)])[0].successful
        assert not node.set_parameters([Parameter("compressed", value="maybe")])[0].successful
        assert node.set_parameters([Parameter("min_time_gap_s", value=12)])[0].successful
        assert node.param("min_time_gap_s") == 12.0
    finally:
        node.destroy_node()


def test_failed_activate_and_error_leave_nothing_running(rclpy_context, monkeypatch):
    from rclpy.parameter import Parameter

    fakes = []
    node = bare_node({"image_topics": ["/cam0/image_raw", "/cam1/image raw"]},
                     factory=lambda cfg, *a: fakes.append(FakeDetector(cfg)) or fakes[-1])
    try:
        assert node.trigger_configure().name == "FAILURE" and not fakes  # bad name: refused before loading
        node.set_parameters([Parameter("image_topics", value=["/cam0/image_raw", "/cam1/image_raw"])])
        assert node.trigger_configure().name == "SUCCESS" and len(fakes) == 1
        real = node.create_subscription
        calls = []

        def second_fails(*args, **kwargs):
            calls.append(args[1])
            if len(calls) == 2:
                raise RuntimeError("no such transport")
            return real(*args, **kwargs)

        monkeypatch.setattr(node, "create_subscription", second_fails)
        assert node.trigger_activate().name == "FAILURE"
        assert node._subs == [] and node._worker is None  # the first subscription was undone
        monkeypatch.setattr(node, "_reliability", lambda: 1 / 0)  # raises inside the transition
        node.trigger_activate()
        assert node._state_machine.current_state[1] == "unconfigured"  # on_error ran
        assert fakes[0].released and node._pubs == {} and node._inference is None
        monkeypatch.undo()
        assert node.trigger_configure().name == "SUCCESS" and node.trigger_activate().name == "SUCCESS"
        assert len(node._subs) == 2 and len(fakes) == 2
    finally:
        node.stop()
        node.destroy_node()


def test_gpu_reactivation_reloads_what_was_configured(rclpy_context):
    """On a GPU deactivate frees the model and activate loads it again: from the paths read at
    configure (or the last ~/reload_map), not a map_path set since."""
    from rclpy.parameter import Parameter

    loads = []
    node = bare_node({"device": "cuda"}, factory=lambda cfg, c, m: loads.append((m, c)) or FakeDetector(cfg))
    try:
        assert node.trigger_configure().name == "SUCCESS" and node.trigger_activate().name == "SUCCESS"
        node.set_parameters([Parameter("map_path", value="elsewhere")])
        assert node.trigger_deactivate().name == "SUCCESS" and node._inference is None  # freed (GPU)
        assert node.trigger_activate().name == "SUCCESS"
        assert loads == [("fake", "fake"), ("fake", "fake")]
    finally:
        node.stop()
        node.destroy_node()
