"""Metric loop-closure edges from the real node over DDS on EuRoC V1_01: the left images (img_1, then
img_0 98 s later: a revisit) in mode loop_closure with ``verify``, with a registered depth topic
(16UC1 millimetres, from the stereo pair) or with the right images and both CameraInfos (``stereo``:
the node computes the depth), against the Vicon ground truth; bad depth messages are counted while
the node keeps answering."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from euroc_fixtures import errors, ground_truth, rotation_matrix
from ros_fixtures import running_node
from ros_helpers import node_report, report_after_answers
from test_depth_input import depth_msg
from vlad_localization.images.io import load_rgb
from vlad_localization.ros.client import image_message, wait_for
from vlad_localization.ros.messages import ns_to_stamp, parse_loop_closure_edges
from vlad_localization.verification import StereoRig, load_euroc_sensor
from vlad_localization.verification.depth import stereo_depth_image

MAX_ROTATION_DEG = 5.0
MAX_TRANSLATION_ERROR = 0.2  # |t - t_gt| / |t_gt|, the metric translation (0.43 m between img_0 and img_1)
LEFT, DEPTH, RIGHT = "/euroc/left/image_raw", "/euroc/left/depth", "/euroc/right/image_raw"
S = 10**9


def stereo_camera_infos(left, right) -> tuple[CameraInfo, CameraInfo]:
    """What a calibrated stereo driver publishes for two EuRoC sensors: K and D of the raw images, each
    camera's rectification R and projection P (``cv2.stereoRectify``: ``P_right[0, 3] = -fx * baseline``)."""
    rig = StereoRig.from_sensors(left, right)
    height, width = left.image_hw
    r1, r2, p1, p2, *_ = cv2.stereoRectify(rig.left.matrix, rig.left.dist_coeffs, rig.right.matrix,
                                           rig.right.dist_coeffs, (width, height), rig.rotation,
                                           rig.translation.reshape(3, 1), alpha=0)
    return tuple(CameraInfo(height=height, width=width, distortion_model="plumb_bob",
                            d=[*map(float, s.camera.distortion), 0.0], k=s.camera.matrix.ravel().tolist(),
                            r=r.ravel().tolist(), p=p.ravel().tolist())
                 for s, r, p in ((left, r1, p1), (right, r2, p2)))


def test_camera_infos_give_back_the_calibrated_rig(datasets_dir):
    euroc = datasets_dir / "euroc_loop_pairs"
    left, right = load_euroc_sensor(euroc / "sensorLeft.yaml"), load_euroc_sensor(euroc / "sensorRight.yaml")
    rig, calibrated = StereoRig.from_camera_info(*stereo_camera_infos(left, right)), StereoRig.from_sensors(left, right)
    assert np.allclose(rig.rotation, calibrated.rotation, atol=1e-6)
    assert np.allclose(rig.translation, calibrated.translation, atol=1e-6)


@pytest.fixture(scope="module", params=["depth", "stereo"])
def metric_run(request, euroc_run, node_setup, tmp_path_factory):
    """The node on the revisit with a depth topic or the right images; then, with a depth topic, three
    frames with bad depth (wrong encoding, wrong size, all NaN). Returns (the edges, the last
    diagnostics, frames, euroc folder, the stamps of the bad-depth frames that were answered)."""
    kind = request.param
    frames, sensor, euroc = euroc_run
    infos = stereo_camera_infos(sensor, load_euroc_sensor(euroc / "sensorRight.yaml"))
    log = tmp_path_factory.mktemp(f"ros_{kind}") / "node.log"
    name = f"vlad_{kind}"
    topics = {"depth_topics": [DEPTH]} if kind == "depth" else {"right_image_topics": [RIGHT]}
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    with running_node(node_setup, log, name, (LEFT,), mode="loop_closure", verify=True,
                      score_threshold=0.0, min_time_gap_s=30.0, **topics) as client:
        node = client.node
        publishers = {"left_info": node.create_publisher(CameraInfo, "/euroc/left/camera_info", 5),
                      "right_info": node.create_publisher(CameraInfo, "/euroc/right/camera_info", 5),
                      "depth": node.create_publisher(Image, DEPTH, reliable),
                      "right": node.create_publisher(Image, RIGHT, reliable)}
        used = ["left_info", "depth"] if kind == "depth" else ["left_info", "right_info", "right"]
        assert wait_for(lambda: all(publishers[p].get_subscription_count() for p in used), 20)

        def depth_received() -> int:  # depth (or right) images the node reported received, so far
            return int(node_report(client, name)[f"depth_received[{LEFT}]"])

        def publish(stamp: int, index: int, rgb, depth: Image | None = None) -> bool:
            received = depth_received()
            for msg, pub in zip(infos, ("left_info", "right_info")):
                msg.header.stamp = ns_to_stamp(stamp)
                publishers[pub].publish(msg)
            if kind == "stereo":
                right = image_message(load_rgb(euroc / f"right_img_{index}.png"))
                right.header.stamp = ns_to_stamp(stamp)
                publishers["right"].publish(right)
            elif depth is not None:
                depth.header.stamp = ns_to_stamp(stamp)
                publishers["depth"].publish(depth)
            if kind == "stereo" or depth is not None:  # the node has it before the image (it would wait 0.25 s)
                assert node_report(client, name, lambda v: int(v[f"depth_received[{LEFT}]"]) > received, 10)
            client.publish(rgb, stamp)
            return client.wait_candidates(stamp, 60) is not None

        warm_up = depth_msg(np.full((480, 752), 1000, np.uint16)) if kind == "depth" else \
            image_message(load_rgb(euroc / "right_img_0.png"))

        wanted = {f"camera_info[{LEFT}]": "yes"} | ({f"right_camera_info[{LEFT}]": "yes"} if kind == "stereo" else {})

        def ready(values) -> bool:  # the calibration and a depth (or right) image are in
            return values[f"depth_received[{LEFT}]"] != "0" and wanted.items() <= values.items()

        def node_receives() -> bool:  # a publisher's first messages wait for discovery to finish (seconds)
            for msg, pub in zip(infos, ("left_info", "right_info")):
                publishers[pub].publish(msg)
            warm_up.header.stamp = ns_to_stamp(S)
            publishers[used[-1]].publish(warm_up)
            return node_report(client, name, ready, 0) is not None

        assert wait_for(node_receives, 30, period=0.5), log.read_text()[-3000:]
        rig = StereoRig.from_sensors(sensor, load_euroc_sensor(euroc / "sensorRight.yaml"))
        for stamp, index, rgb in frames:
            metres = stereo_depth_image(rgb, load_rgb(euroc / f"right_img_{index}.png"), rig, 20.0)
            mm = depth_msg(np.where(np.isfinite(metres), metres * 1000, 0).astype(np.uint16))
            assert publish(stamp, index, rgb, mm), f"no ~/candidates for img_{index}:\n{log.read_text()[-3000:]}"
        assert wait_for(lambda: client.get("loop_closure_edges"), 10), log.read_text()[-3000:]
        answered = []
        if kind == "depth":
            after = frames[-1][0] + 5 * S
            img_2 = load_rgb(euroc / "left_img_2.png")
            bad = (image_message(img_2),  # rgb8: not a depth image
                   depth_msg(np.full((100, 100), 1500, np.uint16)),  # not the image's size, nor scaled
                   depth_msg(np.full((480, 752), np.nan, np.float32)))  # no valid pixel
            answered = [after + i * S for i, msg in enumerate(bad) if publish(after + i * S, 2, img_2, msg)]
        diagnostics = report_after_answers(client, name)  # once the node counted every frame answered
        edges = [e for rec in client.get("loop_closure_edges") for e in parse_loop_closure_edges(rec.msg)]
    return kind, edges, diagnostics, frames, euroc, answered


def test_the_revisit_edge_is_metric_and_near_the_ground_truth(metric_run):
    kind, edges, diagnostics, frames, euroc, _ = metric_run
    revisit = [e for e in edges if abs(e["query_stamp"] - frames[1][0] / S) < 1e-6]
    assert len(revisit) == 1
    edge = revisit[0]
    assert (edge["map"], edge["map_id"], edge["metric"]) == ("run", 0, True)

    class Pose:  # what errors() reads
        rotation = rotation_matrix(edge["quaternion"])
        translation = edge["translation"]

    truth = ground_truth(euroc, 0, 1)
    rotation, direction, scale = errors(Pose, truth)
    error = np.linalg.norm(edge["translation"] - truth[:3, 3]) / np.linalg.norm(truth[:3, 3])
    print(f"node, {kind}: rotation {rotation:.2f} deg, direction {direction:.2f} deg, scale {scale:.3f}, "
          f"translation error {100 * error:.1f} % of {np.linalg.norm(truth[:3, 3]):.3f} m, {edge['inliers']} inliers")
    assert rotation < MAX_ROTATION_DEG and error < MAX_TRANSLATION_ERROR
    assert diagnostics["edges[metric]"] == "1" and np.all(np.linalg.eigvalsh(edge["covariance"]) > 0)
    counts = {e: int(diagnostics[f"depth_{e}[{LEFT}]"]) for e in ("received", "matched", "unmatched", "rejected")}
    assert counts["matched"] == (5 if kind == "depth" else 2) and counts["unmatched"] == 0, counts
    assert counts["rejected"] == (3 if kind == "depth" else 0), counts  # the stereo keyframe has its depth


def test_bad_depth_is_counted_and_the_frames_still_answered(metric_run):
    """The depth run sends three bad depth messages: each is counted by its reason and its frame is
    still answered (without depth). The stereo run's right images are all good: none is rejected."""
    kind, _, diagnostics, _, _, answered = metric_run
    bad = kind == "depth"
    assert len(answered) == (3 if bad else 0)  # processed without depth
    for reason in ("unknown_encoding", "size_mismatch", "no_valid_depth"):
        assert diagnostics.get(f"rejected[depth_{reason}]", "0") == ("1" if bad else "0"), diagnostics
    assert diagnostics[f"depth_rejected[{LEFT}]"] == ("3" if bad else "0")
    assert not [k for k, v in diagnostics.items() if k.startswith("rejected[stereo_") and v != "0"], diagnostics
