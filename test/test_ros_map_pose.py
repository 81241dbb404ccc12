"""``~/pose`` and ``~/initialpose_out`` from the real node over DDS: a prebuilt EuRoC map with Vicon
poses and stereo depth (mode localize, ``verify``, the body-to-camera extrinsic as the
``camera_to_base`` parameter). The revisit img_1 gets its pose in the map with the query's stamp and
``map_frame``; a frame whose verification fails and a map whose keyframes have no pose get none."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from std_srvs.srv import Trigger

from euroc_fixtures import extrinsic_values, pose_errors
from ros_fixtures import NodeSetup, running_node
from ros_helpers import FakeDetector, bare_node, changed_parameters, report_after_answers
from test_map_pose_euroc import MAX_POSITION_ERROR_M, MAX_ROTATION_DEG
from vlad_localization.images.io import load_rgb
from vlad_localization.ros.client import wait_for
from vlad_localization.ros.messages import parse_loop_closure_edges, stamp_to_ns

TOPIC, NAME, FRAME = "/euroc/cam0/image_raw", "vlad_pose", "vicon_world"
S = 10**9


def record_of(msg) -> dict:
    """A PoseWithCovarianceStamped as the map_pose record pose_errors() reads."""
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    return {"position": [p.x, p.y, p.z], "orientation": [o.x, o.y, o.z, o.w], "covariance": list(msg.pose.covariance)}


@pytest.fixture(scope="module")
def node_run(euroc_env, posed_maps, tmp_path_factory):
    """Frames: A img_1 (pose), B another place resized to the camera (closure accepted at score 0,
    verification fails), then the map without poses: C img_1 (verified edge, no pose), then the posed
    map again: D img_1 (pose; ~/initialpose_out rate-limited). Returns what the node published."""
    root = tmp_path_factory.mktemp("ros_pose")
    cam = euroc_env["sensor"].camera
    config = yaml.safe_load(posed_maps["config"].read_text())
    config["verification"] = {"intrinsics": [cam.fx, cam.fy, cam.cx, cam.cy, *cam.distortion[:4]]}  # no extrinsic
    (root / "node.yaml").write_text(yaml.safe_dump(config))
    setup = NodeSetup(euroc_env["common"][1], root / "node.yaml")
    start = posed_maps["vicon"][1][0]
    stamps = {name: start + i * S for i, name in enumerate("ABCD")}
    query = load_rgb(euroc_env["euroc"] / "left_img_1.png")
    elsewhere = cv2.resize(load_rgb(euroc_env["euroc"].parent / "gardenspoint_10" / "query" / "4.jpg"),
                           query.shape[1::-1])
    log = root / "node.log"
    with running_node(setup, log, NAME, (TOPIC,), mode="localize", map_path=posed_maps["metric"], verify=True,
                      score_threshold=0.0, min_time_gap_s=30.0, map_frame=FRAME,
                      camera_to_base=extrinsic_values(euroc_env["sensor"].body_T_sensor), publish_initialpose=True,
                      initialpose_min_score=0.0, initialpose_min_interval_s=1000.0) as client:
        def send(name: str, rgb) -> None:
            client.publish(rgb, stamps[name])
            assert client.wait_candidates(stamps[name], 90), f"no ~/candidates for {name}:\n{log.read_text()[-3000:]}"

        def reload_map() -> None:
            assert client.call(Trigger, "reload_map", timeout=60).success

        send("A", query)
        send("B", elsewhere)
        with changed_parameters(client, map_path=str(posed_maps["no_pose"])):
            reload_map()
            send("C", query)
        reload_map()  # the posed map again
        send("D", query)
        assert wait_for(lambda: any(stamp_to_ns(r.msg.header.stamp) == stamps["D"] for r in client.get("pose")), 20), \
            log.read_text()[-3000:]
        diagnostics = report_after_answers(client, NAME)  # once the node counted the four frames
        edges = [e for r in client.get("loop_closure_edges") for e in parse_loop_closure_edges(r.msg)]
        return {"stamps": stamps, "poses": [r.msg for r in client.get("pose")],
                "initialposes": [r.msg for r in client.get("initialpose_out")], "edges": edges,
                "diagnostics": diagnostics, "truth": posed_maps["vicon"][1][1]}


def test_the_revisit_is_published_with_its_stamp_frame_and_pose(node_run):
    stamps, poses = node_run["stamps"], node_run["poses"]
    assert [stamp_to_ns(m.header.stamp) for m in poses] == [stamps["A"], stamps["D"]]
    for msg in poses:
        assert msg.header.frame_id == FRAME
        position, rotation, delta = pose_errors(record_of(msg), node_run["truth"])
        covariance = np.reshape(msg.pose.covariance, (6, 6))
        print(f"node ~/pose: position error {100 * position:.1f} cm, rotation {rotation:.2f} deg")
        assert position < MAX_POSITION_ERROR_M and rotation < MAX_ROTATION_DEG
        assert np.all(np.linalg.eigvalsh(covariance) > 0) and delta @ np.linalg.solve(covariance, delta) < 22.46


def test_nothing_when_verification_fails_or_the_keyframe_has_no_pose(node_run):
    stamps, diagnostics = node_run["stamps"], node_run["diagnostics"]
    def verified(name: str) -> bool:  # an edge was published for that frame (stamps as float64 s)
        return any(abs(e["query_stamp"] - stamps[name] / S) < 1e-6 for e in node_run["edges"])

    assert verified("A") and verified("C") and verified("D") and not verified("B")  # B failed, C has no pose
    assert sum(int(v) for k, v in diagnostics.items() if k.startswith("verified[") and k != "verified[ok]") >= 1
    assert diagnostics["map_poses[metric]"] == "2" and "map_poses[monocular]" not in diagnostics


def test_initialpose_out_republishes_once_then_rate_limits(node_run):
    stamps, diagnostics = node_run["stamps"], node_run["diagnostics"]
    assert [stamp_to_ns(m.header.stamp) for m in node_run["initialposes"]] == [stamps["A"]]
    assert node_run["initialposes"][0].pose == node_run["poses"][0].pose
    assert diagnostics["initialpose[published]"] == "1" and diagnostics["initialpose[rate_limited]"] == "1"


def test_extrinsic_parameters_are_checked(rclpy_context):
    """camera_to_base: 7 numbers per camera with a unit quaternion (refused when set otherwise), one
    extrinsic per image topic at configure; camera_to_base_from_tf without tf2_ros: a failed configure
    that says what to do; the extrinsic reaches the detector's configuration."""
    from rclpy.parameter import Parameter

    from vlad_localization.ros.extrinsics import tf2_missing

    fakes = []
    node = bare_node({"image_topics": ["/cam0/image_raw", "/cam1/image_raw"],
                      "camera_to_base": [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]},
                     factory=lambda cfg, *a: fakes.append(FakeDetector(cfg)) or fakes[-1])
    try:
        assert node.trigger_configure().name == "FAILURE" and not fakes
        assert "camera_to_base holds 1 extrinsic(s) for 2 image_topics" in node._last_error
        for bad in ([0.0] * 6, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0], ["x"] * 7):
            assert not node.set_parameters([Parameter("camera_to_base", value=bad)])[0].successful
        both = [0, 0, 1, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 1]  # an integer array (written without decimal points)
        assert node.set_parameters([Parameter("camera_to_base", value=both)])[0].successful
        assert node.trigger_configure().name == "SUCCESS"
        node._apply_frame_params(node._inference)  # sent to the inference thread, applied before the next frame
        assert wait_for(lambda: fakes[0].config.verification.camera_to_base == [float(v) for v in both], 5)
        assert node.trigger_cleanup().name == "SUCCESS"
        node.set_parameters([Parameter("camera_to_base_from_tf", value=True)])
        if tf2_missing() is None:
            pytest.skip("tf2_ros is importable here (a ROS install): the refusal is not reachable")
        assert node.trigger_configure().name == "FAILURE" and "needs tf2_ros" in node._last_error
    finally:
        node.stop()
        node.destroy_node()


def test_camera_to_base_from_tf_replaces_the_parameter_once_every_camera_is_known(rclpy_context, monkeypatch):
    """With camera_to_base_from_tf the node looks base_frame <- each image's frame_id up (here a stand-in
    tf2_ros module: the real one comes with a ROS install) once per camera; until every camera's is
    known ~/pose waits, then the transforms replace camera_to_base in the detector's configuration."""
    import sys
    import types

    from geometry_msgs.msg import Transform

    class TransformException(Exception):
        pass

    class Buffer:
        transforms: dict = {}
        lookups: list = []

        def lookup_transform(self, target, source, _time):
            self.lookups.append((target, source))
            if (target, source) not in self.transforms:
                raise TransformException(f"{source} does not exist")
            return types.SimpleNamespace(transform=self.transforms[target, source])

    fake = types.SimpleNamespace(Buffer=Buffer, TransformException=TransformException,
                                 TransformListener=lambda buffer, node: types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)
    detectors = []
    node = bare_node({"image_topics": ["/cam0/image_raw", "/cam1/image_raw"], "camera_to_base_from_tf": True,
                      "base_frame": "body"}, factory=lambda cfg, *a: detectors.append(FakeDetector(cfg)) or detectors[-1])
    try:
        assert node.trigger_configure().name == "SUCCESS"
        tf = node._tf
        assert "no TF body <- 'cam0_optical' yet" in tf.lookup(0, "cam0_optical") and tf.camera_to_base() is None
        for camera, z in ((0, 0.5), (1, -0.25)):
            transform = Transform()
            transform.translation.z, transform.rotation.w = z, 1.0
            Buffer.transforms["body", f"cam{camera}_optical"] = transform
            assert tf.lookup(camera, f"cam{camera}_optical") is None
        count = len(Buffer.lookups)
        assert tf.lookup(0, "cam0_optical") is None and len(Buffer.lookups) == count  # looked up once
        assert tf.camera_to_base() == [0, 0, 0.5, 0, 0, 0, 1, 0, 0, -0.25, 0, 0, 0, 1]
        node._apply_frame_params(node._inference)
        assert wait_for(lambda: detectors[0].config.verification.camera_to_base == tf.camera_to_base(), 5)
    finally:
        node.stop()
        node.destroy_node()
