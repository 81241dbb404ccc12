"""Counters of the node's input and work, reported on ``/diagnostics`` (``DiagnosticArray``).

Thread-safe: image callbacks (executor) and the inference worker both update one
:class:`NodeStats`; a 1 Hz timer turns it into a ``DiagnosticStatus`` with rates over the last
period.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

LATENCY_KEYS = ("encode_ms", "search_ms", "rerank_ms", "total_ms")
# per camera with a depth input: its depth images (or right images) received, paired with a processed
# frame, missing for one (none within the stamp tolerance), rejected (bad message or calibration)
DEPTH_EVENTS = ("received", "matched", "unmatched", "rejected")


class NodeStats:
    """Received / processed / dropped / rejected counts and recent latencies."""

    def __init__(self, cameras: list[str], latency_window: int = 50, depth_cameras=()):
        self.cameras = list(cameras)
        self.depth_cameras = sorted(depth_cameras)
        self._lock = threading.Lock()
        self.received = Counter()  # camera index -> frames received
        self.dropped = Counter()  # camera index -> frames replaced before processing
        self.rate_limited = Counter()  # camera index -> frames skipped by max_rate_hz
        self.rejected = Counter()  # reason -> bad frames
        self.verified = Counter()  # verification status (ok or a rejection reason) -> loop closures
        self.edges = Counter()  # "metric" | "monocular" -> ~/loop_closure_edges published
        self.map_poses = Counter()  # "metric" | "monocular" -> ~/pose published
        self.initialpose = Counter()  # InitialPoseGate outcome (published, rate_limited, low_score, ...) -> count
        self.depth = Counter()  # (camera index, one of DEPTH_EVENTS) -> count
        self.decisions = Counter()  # loop_closure.DECISIONS status -> frames (inconsistent: held back)
        self.processed = 0
        self.loop_closures = 0
        self._latency = {k: deque(maxlen=latency_window) for k in LATENCY_KEYS}
        self._last = (time.monotonic(), Counter(), 0, 0)

    def count(self, counter: str, key) -> None:
        with self._lock:
            getattr(self, counter)[key] += 1

    def frame_done(self, timings: dict[str, float], loop_closure: bool, decision: str | None = None) -> None:
        """One processed frame: its timings, whether it closed a loop and the rule's decision status."""
        with self._lock:
            self.processed += 1
            self.loop_closures += int(loop_closure)
            if decision is not None:
                self.decisions[decision] += 1
            for key in LATENCY_KEYS:
                if key in timings:
                    self._latency[key].append(float(timings[key]))

    def snapshot(self) -> dict[str, str]:
        """Key/values for diagnostics; rates are over the time since the previous snapshot."""
        with self._lock:
            now = time.monotonic()
            t_prev, received_prev, processed_prev, rejected_prev = self._last
            rejected = sum(self.rejected.values())
            dt = max(now - t_prev, 1e-6)
            values = {}
            for i, topic in enumerate(self.cameras):
                values[f"input_rate_hz[{topic}]"] = f"{(self.received[i] - received_prev[i]) / dt:.2f}"
                values[f"received[{topic}]"] = str(self.received[i])
                values[f"dropped_busy[{topic}]"] = str(self.dropped[i])
                values[f"skipped_max_rate[{topic}]"] = str(self.rate_limited[i])
            for i in self.depth_cameras:
                for event in DEPTH_EVENTS:
                    values[f"depth_{event}[{self.cameras[i]}]"] = str(self.depth[i, event])
            values["processed_rate_hz"] = f"{(self.processed - processed_prev) / dt:.2f}"
            values["processed"] = str(self.processed)
            values["dropped"] = str(sum(self.dropped.values()))
            values["rejected"] = str(rejected)
            values["rejected_last_period"] = str(rejected - rejected_prev)
            for reason, n in sorted(self.rejected.items()):
                values[f"rejected[{reason}]"] = str(n)
            values["loop_closures"] = str(self.loop_closures)
            for status, n in sorted(self.decisions.items()):
                values[f"decisions[{status}]"] = str(n)
            for status, n in sorted(self.verified.items()):
                values[f"verified[{status}]"] = str(n)
            for name in ("edges", "map_poses", "initialpose"):
                for kind, n in sorted(getattr(self, name).items()):
                    values[f"{name}[{kind}]"] = str(n)
            for key, window in self._latency.items():
                if window:
                    values[f"latency_{key}"] = f"{sum(window) / len(window):.1f}"
            self._last = (now, Counter(self.received), self.processed, rejected)
            return values


def diagnostic_array(stamp, name: str, level: bytes, message: str, values: dict[str, str]) -> DiagnosticArray:
    """One ``DiagnosticStatus`` (hardware_id = the node) wrapped in a ``DiagnosticArray``."""
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=name)
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def parse_diagnostics(array: DiagnosticArray, name: str) -> dict[str, str] | None:
    """The key/values of the status called ``name`` (None when absent)."""
    for status in array.status:
        if status.name == name:
            return {kv.key: kv.value for kv in status.values}
    return None
