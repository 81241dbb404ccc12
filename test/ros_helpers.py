"""Helpers for the ROS tests: a fake localizer, the node in-process with it, a message collector,
what the real node reports on /diagnostics, and parameters changed for a block (starting the real
node and talking to it: :mod:`vlad_localization.ros.client`)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from vlad_localization.ros.client import wait_for


# -- a fake Localizer (unit tests of the adapter without the model) --------------------------------
@dataclass
class FakePose:
    position: tuple = (1.0, 2.0, 0.0)
    orientation: tuple = (0.0, 0.0, 0.0, 1.0)


@dataclass
class FakeCandidate:
    map_id: int
    stamp_ns: int | None
    patch_score: float
    global_similarity: float = 0.9
    inliers: int = 10
    frame_id: str = "cam"
    file: str = ""
    source: int = 0
    pose: FakePose | None = field(default_factory=FakePose)
    per_size: dict = field(default_factory=dict)
    query_keypoints: np.ndarray | None = None
    map_keypoints: np.ndarray | None = None
    fused_score: float = float("nan")
    sequence_similarity: float = float("nan")
    run: int = 0
    evidence: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        from vlad_localization.loop_closure import score_of

        return score_of(self.patch_score, self.fused_score)


@dataclass
class FakeResult:
    candidates: list
    timings: dict
    map: object = None
    network_size: tuple = (24, 32)

    def store(self, candidate):
        return self.map


class FakeMap:
    size = 3
    thumbnails = 0  # calls: ~/match_image work

    def thumbnail(self, map_id):
        self.thumbnails += 1
        return np.zeros((24, 32, 3), np.uint8)


class FakeLocalizer:
    def __init__(self, owner):
        self.owner = owner

    def reload_map(self, path=None, verify=None):
        return self.owner.map


class FakeDetector:
    """Returns keyframe (mean pixel value % 3) with stamps 0, 100, 200 s; optional delay; the real
    loop-closure rule with the configuration the node gives it."""

    def __init__(self, config=None, delay_s: float = 0.0):
        self.map = FakeMap()
        self.localizer = FakeLocalizer(self)
        self.config = config
        self.delay_s = delay_s
        self.queries = 0
        self.released = False

    def process(self, stamp_ns, rgb, pose=None, camera=0, camera_model=None, depth=None):
        from vlad_localization.detector import FrameResult
        from vlad_localization.loop_closure import select_loop_closure

        self.queries += 1
        time.sleep(self.delay_s)
        best = int(rgb.mean()) % 3
        order = [best] + [i for i in range(3) if i != best]
        cands = [FakeCandidate(i, i * 100 * 10**9, 0.9 if r == 0 else 0.1) for r, i in enumerate(order)]
        lc = self.config.loop_closure
        closure = select_loop_closure(stamp_ns, cands, lc.score_threshold, lc.min_time_gap_s)
        timings = {"encode_ms": 1.0, "search_ms": 0.1, "rerank_ms": 0.5, "total_ms": 1.6}
        return FrameResult(stamp_ns, camera, cands, closure, None, timings, FakeResult(cands, timings, self.map))

    def stats(self):
        return {}

    def save_map(self, path, sources=()):
        raise ValueError("the fake keeps no keyframes")

    def reload_map(self, path, verify=None):
        return self.localizer.reload_map(path, verify)

    def release(self):
        self.released = True


class Collector:
    """Thread-safe message store for subscription callbacks: ``cb(topic)`` appends there."""

    def __init__(self):
        self.lock = threading.Lock()
        self.msgs: dict[str, list] = {}

    def cb(self, topic: str):
        def append(msg):
            with self.lock:
                self.msgs.setdefault(topic, []).append(msg)
        return append

    def get(self, topic: str) -> list:
        with self.lock:
            return list(self.msgs.get(topic, []))

    def clear(self):
        with self.lock:
            self.msgs.clear()


def bare_node(overrides, factory=None):
    """The node in this process (inference on a thread) with a :class:`FakeDetector` (or ``factory``'s
    detector), map and checkpoint "fake" and the parameter ``overrides``; not configured."""
    from rclpy.parameter import Parameter

    from vlad_localization.ros.node import VladLocalizationNode

    params = [Parameter("map_path", value="fake"), Parameter("checkpoint", value="fake")]
    params += [Parameter(k, value=v) for k, v in overrides.items()]
    return VladLocalizationNode(detector_factory=factory or (lambda cfg, *a: FakeDetector(cfg)),
                                isolate_inference=False, parameter_overrides=params)


# -- the real node, through a vlad_localization.ros.client.NodeClient -------------------------------
def status_of(client, node_name: str, predicate=lambda status: True, timeout: float = 30.0):
    """The newest /diagnostics ``DiagnosticStatus`` of node ``node_name`` for which ``predicate``
    holds, once the node has reported it (None after ``timeout`` s)."""
    name = f"{node_name}: loop closure"

    def newest():
        for rec in reversed(client.get("diagnostics")):
            for status in rec.msg.status:
                if status.name == name and predicate(status):
                    return status
    return wait_for(newest, timeout)


def status_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def node_report(client, node_name: str, predicate=lambda values: True, timeout: float = 30.0) -> dict | None:
    """The key/values of the newest /diagnostics status of ``node_name`` for which ``predicate``
    holds (:func:`status_of`)."""
    status = status_of(client, node_name, lambda s: predicate(status_values(s)), timeout)
    return None if status is None else status_values(status)


def report_after_answers(client, node_name: str, timeout: float = 10.0) -> dict:
    """The node's /diagnostics once it has counted every frame the client got ``~/candidates`` for:
    its counters then hold all that those frames did (the node counts a frame after publishing it)."""
    answered = len(client.get("candidates"))
    values = node_report(client, node_name, lambda v: int(v.get("processed", -1)) >= answered, timeout)
    assert values is not None, f"the node did not report the {answered} frames answered as processed"
    return values


def answered(client, rgb, stamp_ns, timeout=30.0) -> bool:
    """Publish ``rgb`` stamped ``stamp_ns``: whether the node answered it on ``~/candidates``."""
    client.publish(rgb, stamp_ns)
    return client.wait_candidates(stamp_ns, timeout) is not None


@contextmanager
def changed_parameters(client, **values):
    """Set parameters of a node shared by several tests for the block; the values they had are set
    back after it (also when the block fails)."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    reply = client.call(GetParameters, "get_parameters", GetParameters.Request(names=list(values)))
    before = {name: parameter_value_to_python(v) for name, v in zip(values, reply.values)}
    assert client.set_parameters(**values), f"the node refused {values}"
    try:
        yield
    finally:
        assert client.set_parameters(**before), f"the node refused its own values {before}"
