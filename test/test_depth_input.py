"""The node's depth input without DDS: pairing frames with depth / right images by stamp, depth
image messages, registering a scaled depth, the stereo rig from two CameraInfos (ROS's P[0,3] =
-fx * baseline) and what DepthInput hands the detector, counts and rejects."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image

from vlad_localization.images.convert import ImageConversionError, depth_msg_to_array, rgb_to_image_fields
from vlad_localization.images.stamp_match import KEEP, OPEN, StampMatcher
from vlad_localization.ros.depth_input import DepthInput, StereoPair, depth_sources
from vlad_localization.ros.diagnostics import NodeStats
from vlad_localization.ros.messages import ns_to_stamp
from vlad_localization.ros.params import BY_NAME
from vlad_localization.verification.depth import StereoRig
from vlad_localization.verification.depth_sources import fit_depth

MS = 1_000_000


# -- stamp matching ------------------------------------------------------------------------------
def test_a_frame_takes_the_nearest_message_within_the_tolerance():
    matcher = StampMatcher(10 * MS)
    for stamp in (100, 133, 166):
        matcher.add(stamp * MS, f"d{stamp}")
    assert matcher.pair(133 * MS).msg == "d133"  # exact
    assert matcher.pair(160 * MS).msg == "d166"  # nearest, 6 ms
    assert matcher.pair(150 * MS).msg is None  # 17 ms from both
    assert matcher.pair(170 * MS).wait(0.01) == "d166"  # no later message yet: waits, keeps the one within 10 ms
    exact = StampMatcher(0)
    exact.add(5, "a")
    assert exact.pair(5).msg == "a" and exact.pair(6).wait(0) is None


def test_a_message_arriving_after_the_frame_completes_its_pairing():
    matcher = StampMatcher(10 * MS)
    matcher.add(95 * MS, "early")  # within the tolerance, but a nearer one may follow
    pairing = matcher.pair(100 * MS)
    assert not pairing.done and pairing.msg == "early"
    threading.Timer(0.05, matcher.add, (101 * MS, "late")).start()
    t0 = time.monotonic()
    assert pairing.wait(5.0) == "late" and time.monotonic() - t0 < 2.0  # returns once the message came
    matcher.add(150 * MS, "next")
    assert pairing.msg == "late"  # final once done


def test_waiting_is_bounded_and_memory_too():
    matcher = StampMatcher(10 * MS)
    t0 = time.monotonic()
    assert matcher.pair(100 * MS).wait(0.1) is None and 0.09 < time.monotonic() - t0 < 1.0
    for i in range(KEEP + 5):
        matcher.add(i * 100 * MS, i)
    assert matcher.pair(0).msg is None and matcher.pair((KEEP + 4) * 100 * MS).msg == KEEP + 4  # the oldest dropped
    waiting = [matcher.pair((10_000 + i) * MS) for i in range(OPEN + 2)]
    assert [p.done for p in waiting] == [True, True] + [False] * OPEN  # the oldest stop waiting
    assert waiting[0].wait(10.0) is None
    with pytest.raises(ValueError):
        StampMatcher(-1)


# -- depth messages --------------------------------------------------------------------------------
def depth_msg(depth: np.ndarray, stamp_ns: int = 0, encoding: str | None = None, bigendian: bool = False) -> Image:
    """A 16UC1 (uint16) or 32FC1 (float32) depth image message, with 4 bytes of row padding."""
    dtype = depth.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(depth.astype(dtype)).view(np.uint8).reshape(depth.shape[0], -1)
    rows = np.concatenate([rows, np.zeros((depth.shape[0], 4), np.uint8)], axis=1)
    msg = Image(height=depth.shape[0], width=depth.shape[1], step=rows.shape[1], is_bigendian=int(bigendian),
                encoding=encoding or ("16UC1" if depth.dtype == np.uint16 else "32FC1"), data=rows.tobytes())
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


def test_depth_messages_convert_and_bad_ones_are_refused_by_reason():
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    for big in (False, True):
        out = depth_msg_to_array(depth_msg(mm, bigendian=big))
        assert out.dtype == np.uint16 and np.array_equal(out, mm)
    metres = np.full((3, 4), np.nan, np.float32)
    metres[1, 2] = 2.5
    out = depth_msg_to_array(depth_msg(metres))
    assert out.dtype == np.float32 and out[1, 2] == 2.5 and np.isnan(out[0, 0])
    bad = {
        "unknown_encoding": Image(**rgb_to_image_fields(np.zeros((3, 4, 3), np.uint8))),
        "no_valid_depth": depth_msg(np.zeros((3, 4), np.uint16)),
        "data_too_short": depth_msg(mm),
    }
    bad["no_valid_depth_nan"] = depth_msg(np.full((3, 4), np.nan, np.float32))
    bad["data_too_short"].data = bad["data_too_short"].data[:10]
    for reason, msg in bad.items():
        with pytest.raises(ImageConversionError) as err:
            depth_msg_to_array(msg)
        assert err.value.reason == reason.replace("_nan", "")


def test_a_scaled_depth_is_registered_and_another_size_refused():
    depth = np.arange(6, dtype=np.uint16).reshape(2, 3)
    assert fit_depth(depth, (2, 3)) is depth
    big = fit_depth(depth, (4, 6))
    assert big.dtype == np.uint16 and np.array_equal(big[::2, ::2], depth) and set(np.unique(big)) == set(range(6))
    with pytest.raises(ValueError, match="registered"):
        fit_depth(depth, (4, 4))


# -- stereo calibration from CameraInfo ------------------------------------------------------------
F, BASELINE, HW = 200.0, 0.1, (240, 320)


def camera_info(baseline: float = 0.0, r=np.eye(3), scale: int = 1) -> CameraInfo:
    """A pinhole CameraInfo (no distortion) of images ``scale`` x HW with rectification ``r`` and
    ``P[0, 3] = -f * baseline`` (ROS's right camera; 0 for the left)."""
    (h, w), f = (v * scale for v in HW), F * scale
    return CameraInfo(height=h, width=w, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0], r=np.asarray(r, float).ravel().tolist(),
                      p=[f, 0.0, w / 2, -f * baseline, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0])


def test_the_stereo_rig_follows_ros_camera_info_conventions():
    rig = StereoRig.from_camera_info(camera_info(), camera_info(BASELINE))
    assert np.allclose(rig.rotation, np.eye(3)) and np.allclose(rig.translation, [-BASELINE, 0, 0])
    tilt = cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0]  # both cameras rotated by their rectification
    rig = StereoRig.from_camera_info(camera_info(r=tilt), camera_info(BASELINE, r=tilt))
    assert np.allclose(rig.rotation, np.eye(3)) and np.allclose(rig.translation, tilt.T @ [-BASELINE, 0, 0])
    for bad in (camera_info(0.0), camera_info(-BASELINE)):  # no baseline; the "right" camera on the left
        with pytest.raises(ValueError, match="Tx"):
            StereoRig.from_camera_info(camera_info(), bad)
    with pytest.raises(ValueError, match="not a rotation"):
        StereoRig.from_camera_info(camera_info(r=np.zeros((3, 3))), camera_info(BASELINE))


# -- DepthInput --------------------------------------------------------------------------------------
def textured_pair(disparity: int = 16):
    """A random-texture stereo pair (RGB, HW) with a constant disparity: depth F * BASELINE / disparity."""
    tex = cv2.resize(np.random.default_rng(0).integers(0, 255, (60, 90), dtype=np.uint8), (HW[1] + 40, HW[0]))
    return np.dstack([tex[:, :HW[1]]] * 3), np.dstack([tex[:, disparity:HW[1] + disparity]] * 3)


@pytest.fixture
def depth_input():
    stats, reports = NodeStats(["/c0", "/c1"], depth_cameras=[0, 1]), []
    sources = depth_sources(["/c0", "/c1"], ["/c0/depth", ""], ["", "/c1/right"])
    return DepthInput(sources, 0.01, stats, lambda *r: reports.append(r), 10**7, 20.0, wait_s=0.05), stats, reports


def test_depth_input_pairs_converts_and_counts(depth_input):
    inp, stats, reports = depth_input
    rgb = np.zeros((4, 6, 3), np.uint8)
    inp.on_message(0, depth_msg(np.full((2, 3), 1500, np.uint16), 10 * MS))  # half size: scaled depth
    depth = inp.depth_for(0, inp.frame_arrived(0, 12 * MS), rgb)
    assert depth.shape == (4, 6) and depth[3, 5] == 1500
    assert inp.depth_for(0, inp.frame_arrived(0, 50 * MS), rgb) is None  # nothing within 10 ms
    inp.on_message(0, depth_msg(np.full((3, 3), 1500, np.uint16), 60 * MS))
    inp.on_message(0, depth_msg(np.zeros((2, 3), np.float32), 70 * MS))
    assert inp.depth_for(0, inp.frame_arrived(0, 60 * MS), rgb) is None  # 3x3 is not 4x6 scaled
    assert inp.depth_for(0, inp.frame_arrived(0, 70 * MS), rgb) is None  # no valid pixel
    assert [r[0] for r in reports] == ["depth_size_mismatch", "depth_no_valid_depth"]
    assert "processed without" in reports[0][1]
    values = stats.snapshot()
    assert [values[f"depth_{e}[/c0]"] for e in ("received", "matched", "unmatched", "rejected")] == ["3", "3", "1", "2"]
    assert values["depth_received[/c1]"] == "0" and inp.frame_arrived(2, 0) is None  # camera 2: no depth input


def test_stereo_depth_is_computed_on_demand_from_the_camera_infos(depth_input):
    """The node prepares a StereoPair per frame (cheap); the inference process computes its depth only
    when asked, and what it could not have comes back as rejections the node reports (as here)."""
    inp, stats, reports = depth_input
    left, right = textured_pair(16)
    right_msg = Image(**rgb_to_image_fields(right))
    right_msg.header.stamp = ns_to_stamp(5 * MS)
    inp.on_message(1, right_msg)

    def computed(pair):
        rejections = []
        depth = pair.depth_source(left, rejections).image()
        for reason, text in rejections:  # the node's _report_rejections
            inp.reject(1, reason, text)
        return depth

    pair = inp.depth_for(1, inp.frame_arrived(1, 5 * MS), left)
    assert isinstance(pair, StereoPair) and stats.depth[1, "matched"] == 1
    assert pair.without_right().right is None and pair.without_right().with_right(pair.right) == pair
    assert computed(pair) is None and reports[-1][0] == "stereo_no_camera_info"  # no calibration yet
    inp.on_info(1, camera_info())
    inp.on_info(1, camera_info(BASELINE), "right")
    depth = computed(inp.depth_for(1, inp.frame_arrived(1, 5 * MS), left))
    valid = np.isfinite(depth)
    assert depth.shape == HW and valid.mean() > 0.4
    assert np.median(depth[valid]) == pytest.approx(F * BASELINE / 16, rel=0.02)
    inp.on_info(1, camera_info(scale=2))  # calibrated at twice the images' size: the rig is scaled
    inp.on_info(1, camera_info(BASELINE, scale=2), "right")
    scaled = computed(inp.depth_for(1, inp.frame_arrived(1, 5 * MS), left))
    assert np.array_equal(np.isfinite(scaled), valid) and np.allclose(scaled[valid], depth[valid], rtol=1e-4)
    small = Image(**rgb_to_image_fields(left[::2, ::2].copy()))
    small.header.stamp = ns_to_stamp(9 * MS)
    inp.on_message(1, small)
    assert computed(inp.depth_for(1, inp.frame_arrived(1, 9 * MS), left)) is None
    assert reports[-1][0] == "stereo_size_mismatch" and stats.depth[1, "rejected"] == 2


def test_depth_sources_take_one_topic_per_camera():
    assert depth_sources(["/a", "/b"], [], []) == {}
    assert depth_sources(["/a", "/b"], ["", "/b/depth"], []) == {1: ("depth", "/b/depth")}
    with pytest.raises(ValueError, match="one per image topic"):
        depth_sources(["/a", "/b"], ["/a/depth"], [])
    with pytest.raises(ValueError, match="both"):
        depth_sources(["/a"], ["/a/depth"], ["/a/right"])


def test_list_parameters_empty_by_default_take_strings():
    spec = BY_NAME["depth_topics"]
    assert spec.default == [] and spec.dynamic and spec.coerce(None) == [] and spec.coerce(("/d", "")) == ["/d", ""]
    assert spec.check(["/d", ""]) is None and spec.check(None) is None
    assert "list of strings" in spec.check(5) and "list of strings" in spec.check([1, 2])
