"""Talking to a running ``vlad_localization_node`` from another process (demo, benchmark, tests).

:func:`start_node` / :func:`stop_node` run the real node as a subprocess; :class:`NodeClient` is a
small rclpy node that publishes camera images and collects ``~/candidates``,
``~/loop_closure``, ``~/loop_closure_edges``, ``~/pose``, ``~/initialpose_out`` and ``/diagnostics``
with their receive times.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlad_localization.images.frames import seconds

NODE_EXECUTABLE = "vlad_localization_node"
PARAMS_FILE = Path(__file__).resolve().parents[2] / "config" / "vlad_localization.yaml"


def node_command(params: dict, name: str = "vlad_localization", params_file: Path | None = PARAMS_FILE) -> list[str]:
    """``vlad_localization_node --ros-args [--params-file F] -r __node:=NAME -p k:=v ...``."""
    exe = Path(sys.executable).with_name(NODE_EXECUTABLE)
    args = [str(exe) if exe.exists() else NODE_EXECUTABLE, "--ros-args", "-r", f"__node:={name}"]
    if params_file is not None and Path(params_file).is_file():
        args += ["--params-file", str(params_file)]
    for key, value in params.items():
        args += ["-p", f"{key}:={param_text(value)}"]
    return args


def param_text(value) -> str:
    """A Python value as a ``-p name:=value`` YAML string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(repr(float(v)) if isinstance(v, (int, float)) else f"'{v}'" for v in value) + "]"
    return str(value)


def start_node(params: dict, name: str = "vlad_localization", env: dict | None = None,
               log_path: Path | None = None, params_file: Path | None = PARAMS_FILE) -> subprocess.Popen:
    """Start the node as a subprocess (stdout and stderr to ``log_path``, else discarded)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(node_command(params, name, params_file), stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    finally:
        if log_path:
            out.close()


def stop_node(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 10.0) -> float:
    """Send ``sig``, wait for exit (kill after ``timeout``); returns the seconds it took."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0


@dataclass
class Received:
    msg: object
    t: float  # time.monotonic() at receipt


@dataclass
class NodeClient:
    """Publishes images to the node's camera topic(s) and records its outputs.

    Use as a context manager (creates and spins its own rclpy context in a thread)."""

    node_name: str = "vlad_localization"
    image_topics: tuple[str, ...] = ("/camera/image_raw",)
    reliable: bool = True
    compressed: tuple[bool, ...] | None = None
    odom_topic: str | None = None  # publish nav_msgs/Odometry there with publish_odometry
    received: dict[str, list[Received]] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)  # query stamp ns -> publish time

    def __enter__(self) -> "NodeClient":
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Float64MultiArray

        self._lock = threading.Lock()
        self._service_clients: dict = {}
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node("vlad_client", context=self._context)
        reliability = ReliabilityPolicy.RELIABLE if self.reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=10, reliability=reliability)
        compressed = self.compressed or tuple(t.endswith("/compressed") for t in self.image_topics)
        self.publishers = [self.node.create_publisher(CompressedImage if c else Image, t, qos)
                           for t, c in zip(self.image_topics, compressed)]
        if self.odom_topic:
            from nav_msgs.msg import Odometry

            self.odom_publisher = self.node.create_publisher(Odometry, self.odom_topic, QoSProfile(depth=100))
        base = f"/{self.node_name.lstrip('/')}"
        for name, msg_type, topic in (
            ("candidates", Float64MultiArray, f"{base}/candidates"),
            ("loop_closure", Float64MultiArray, f"{base}/loop_closure"),
            ("loop_closure_edges", Float64MultiArray, f"{base}/loop_closure_edges"),
            ("candidate_poses", PoseArray, f"{base}/candidate_poses"),
            ("pose", PoseWithCovarianceStamped, f"{base}/pose"),
            ("initialpose_out", PoseWithCovarianceStamped, f"{base}/initialpose_out"),
            ("diagnostics", DiagnosticArray, "/diagnostics"),
        ):
            self.subscribe(name, msg_type, topic)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._context.try_shutdown()
        self._thread.join(2.0)

    def subscribe(self, name: str, msg_type, topic: str, depth: int = 50):
        def store(msg):
            with self._lock:
                self.received.setdefault(name, []).append(Received(msg, time.monotonic()))
        return self.node.create_subscription(msg_type, topic, store, depth)

    def get(self, name: str) -> list[Received]:
        with self._lock:
            return list(self.received.get(name, []))

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.sent.clear()

    def wait_connected(self, timeout: float) -> bool:
        """True once the node subscribes to every camera topic (it is configured and active) and, with
        ``odom_topic``, to the odometry (else the first poses could be published before discovery)."""
        publishers = list(self.publishers) + ([self.odom_publisher] if self.odom_topic else [])
        return bool(wait_for(lambda: all(p.get_subscription_count() for p in publishers), timeout))

    def publish(self, rgb: np.ndarray | None, stamp_ns: int, camera: int = 0, msg=None) -> None:
        """Publish ``rgb`` (as rgb8 Image or JPEG CompressedImage) or a prepared ``msg``, stamped."""
        from vlad_localization.ros.messages import ns_to_stamp

        if msg is None:
            msg = image_message(rgb, isinstance_compressed(self.publishers[camera]))
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.header.frame_id = msg.header.frame_id or "camera"
        with self._lock:
            self.sent[stamp_ns] = time.monotonic()
        self.publishers[camera].publish(msg)

    def publish_odometry(self, stamp_ns: int, position, orientation=(0.0, 0.0, 0.0, 1.0)) -> None:
        """One ``nav_msgs/Odometry`` on ``odom_topic`` (pose only)."""
        from nav_msgs.msg import Odometry

        from vlad_localization.ros.messages import ns_to_stamp

        msg = Odometry()
        msg.header.stamp, msg.header.frame_id, msg.child_frame_id = ns_to_stamp(stamp_ns), "odom", "base_link"
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        p.x, p.y, p.z = (float(v) for v in position)
        q.x, q.y, q.z, q.w = (float(v) for v in orientation)
        self.odom_publisher.publish(msg)

    def candidates_for(self, stamp_ns: int, camera: int | None = None) -> Received | None:
        """The ``~/candidates`` message answering the frame stamped ``stamp_ns`` (or None)."""
        from vlad_localization.ros.messages import candidates_query

        for rec in self.get("candidates"):
            query = candidates_query(rec.msg)
            # float64 seconds hold epoch stamps to ~0.3 us: compare with a 1 us tolerance
            if query and abs(query[0] - seconds(stamp_ns)) < 1e-6 and camera in (None, query[1]):
                return rec
        return None

    def call(self, srv_type, name: str, request=None, timeout: float = 10.0):
        """Call a service of the node (``name`` relative to the node, e.g. ``reload_map``).

        One client per service, kept: ``wait_for_service`` only says the server's request side is
        discovered, and a fresh client's first response can be lost while the server has not yet
        discovered the client's response reader (seen as a rare 30 s timeout on ``get_state``)."""
        key = (srv_type, name)
        client = self._service_clients.get(key)
        if client is None:
            client = self._service_clients[key] = self.node.create_client(
                srv_type, f"/{self.node_name.lstrip('/')}/{name}")
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available after {timeout} s")
        future = client.call_async(request if request is not None else srv_type.Request())
        if not wait_for(future.done, timeout):
            raise TimeoutError(f"service {client.srv_name} did not answer within {timeout} s")
        return future.result()

    def set_parameters(self, timeout: float = 10.0, **values) -> bool:
        """Set parameters of the node; True when all were accepted."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        result = self.call(SetParameters, "set_parameters", request, timeout)
        return all(r.successful for r in result.results)

    def lifecycle(self, transition: str | None = None, timeout: float = 30.0):
        """Trigger ``transition`` (configure, activate, deactivate, cleanup, shutdown) -> success,
        or with None return the current state label."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        if transition is None:
            return self.call(GetState, "get_state", timeout=timeout).current_state.label
        request = ChangeState.Request(transition=Transition(label=transition))
        return self.call(ChangeState, "change_state", request, timeout).success

    def wait_candidates(self, stamp_ns: int, timeout: float, camera: int | None = None) -> Received | None:
        return wait_for(lambda: self.candidates_for(stamp_ns, camera), timeout)


def isinstance_compressed(publisher) -> bool:
    return publisher.msg_type.__name__ == "CompressedImage"


def image_message(rgb: np.ndarray, compressed: bool = False):
    """An unstamped ``sensor_msgs/Image`` (rgb8) or JPEG ``CompressedImage`` of an RGB array."""
    from sensor_msgs.msg import CompressedImage, Image

    from vlad_localization.images.convert import rgb_to_compressed, rgb_to_image_fields

    if compressed:
        fmt, data = rgb_to_compressed(rgb, "jpeg", 90)
        return CompressedImage(format=fmt, data=data)
    return Image(**rgb_to_image_fields(rgb))


def wait_for(predicate, timeout: float, period: float = 0.02):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(period)
