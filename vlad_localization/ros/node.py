"""``vlad_localization_node``: the ROS 2 lifecycle node. It only translates: image (and odometry)
messages in, :meth:`LoopClosureDetector.process <vlad_localization.detector.LoopClosureDetector.process>`
in the inference process (:mod:`vlad_localization.ros.inference_process`: its own process, which
owns the device; frames through shared memory), standard messages out. The node's own work (a
single-threaded executor, a thread that converts each newest frame and pairs it with its pose and
depth, a thread that publishes the results) never waits for the model's GIL.

Lifecycle (``rclpy.lifecycle``): configure starts the inference process and loads the model and map;
activate subscribes; deactivate unsubscribes and, on a GPU, ends the inference process (frees its
memory; activate starts it again); cleanup ends it. When the inference process dies, /diagnostics
says so (ERROR, with the cause) and the node starts it again with the same configuration, up to
MAX_RESTARTS times in a row with a growing delay, then stays in ERROR. ``autostart`` (default true)
runs configure + activate at start-up so ``ros2 run`` works without a lifecycle manager. Topics,
parameters and diagnostics: see docs/ros.md.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray, Header
from std_srvs.srv import Trigger

from vlad_localization.images.convert import ImageConversionError, msg_to_rgb
from vlad_localization.images.frames import Pose, PoseTrack, seconds
from vlad_localization.ros import messages
from vlad_localization.ros.depth_input import DepthInput, StereoPair, depth_sources
from vlad_localization.ros.diagnostics import NodeStats, diagnostic_array
from vlad_localization.ros.inference_process import (FrameMeta, InferenceError, InferenceEvents, InferenceProcess,
                                                     InferenceSpec, load_detector)
from vlad_localization.ros.extrinsics import TfExtrinsics, tf2_missing
from vlad_localization.ros.params import BY_NAME, PARAMETERS, config_overrides
from vlad_localization.ros.worker import LatestFrameWorker

NODE_NAME = "vlad_localization"
WARN_PERIOD_S = 5.0
STOP_TIMEOUT_S = 0.8  # then the query in progress is abandoned (shutdown budget: 2 s)
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
RAW_TYPE = "sensor_msgs/msg/Image"
ODOM_KEEP = 20_000  # odometry poses kept for interpolation (minutes at 100 Hz)
ODOM_TOLERANCE_NS = 100_000_000  # an image up to 0.1 s newer than the last odometry gets its pose
ODOM_WAIT_S = 0.25  # the worker waits this long for odometry to pass an image's stamp
FULL_WARN_PERIOD_S = 60.0
MAX_RESTARTS = 3  # the inference process is restarted this many times in a row, then the node stays in ERROR
RESTART_DELAY_S = 0.5  # before the first restart; doubled for each further one


def node_config(get):
    """The library :class:`Config` for the node's parameters (``get(name)`` reads one)."""
    from vlad_localization.config import apply_overrides, load_config

    return apply_overrides(load_config(get("preset")), config_overrides(get), where="node parameters")


def _describe(exc: BaseException) -> str:
    """An exception as one line (the inference process's messages already name their type)."""
    return str(exc) if isinstance(exc, InferenceError) else f"{type(exc).__name__}: {exc}"


class VladLocalizationNode(LifecycleNode):
    """Patch-NetVLAD loop-closure candidates for every camera frame (newest frame only).

    ``detector_factory(config, checkpoint, map_path)`` runs in the inference process: a module-level
    function (pickled by reference). ``isolate_inference=False`` runs the inference on a thread of
    this process instead (tests with a fake detector that they inspect)."""

    def __init__(self, node_name: str = NODE_NAME, detector_factory=load_detector, isolate_inference: bool = True,
                 **kwargs):
        super().__init__(node_name, **kwargs)
        self.add_on_set_parameters_callback(self._check_parameters)
        for p in PARAMETERS:
            descriptor = ParameterDescriptor(description=p.description, dynamic_typing=p.dynamic)
            try:
                self.declare_parameter(p.name, p.default, descriptor)
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                self.get_logger().error(f"parameter {p.name}: {exc}; using the default {p.default!r}")
                self.declare_parameter(p.name, p.default, descriptor, ignore_override=True)
        self._factory = detector_factory
        self._isolate = isolate_inference
        self._inference: InferenceProcess | None = None
        self._inference_lock = threading.Lock()  # replacing or releasing the inference process
        self._generation = 0  # bumped by every release: a pending restart of an older one gives up
        self._stopped = threading.Event()  # the node is shutting down: no restart
        self._restarts = 0  # inference processes started again after one died
        self._restart_attempts = 0  # ... in a row, without a processed frame in between
        self._last_error = ""  # why the last configure / activate / ~/reload_map failed ('' after a success)
        self._cfg = None
        self._frame_params = None  # the every-frame parameters last applied to the detector's config
        self._paths: dict[str, str] = {}  # map and checkpoint read at configure
        self._topics: list[str] = []
        self._subs = []
        self._odom_sub = None
        self._info_subs = []
        self._depth_subs = []
        self._depth: DepthInput | None = None  # depth_topics / right_image_topics, from configure
        self._cameras: dict[int, object] = {}  # camera index -> PinholeCamera from its CameraInfo
        self._poses = PoseTrack([])
        self._poses_lock = threading.Condition()  # odometry callback -> worker waiting for a pose
        self._full_warned = -1e9
        self._worker: LatestFrameWorker | None = None
        self._last_accept: dict[int, float] = {}
        self._input_loggers: dict[str, object] = {}
        self.stats = NodeStats([])
        self._pubs: dict[str, object] = {}
        self._tf: TfExtrinsics | None = None  # camera_to_base_from_tf
        self._initialpose = None  # verification.map_pose.InitialPoseGate of ~/initialpose_out
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.create_service(Trigger, "~/reload_map", self._reload_map,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, "~/save_map", self._save_map, callback_group=MutuallyExclusiveCallbackGroup())

    def param(self, name: str):
        value, spec = self.get_parameter(name).value, BY_NAME.get(name)
        return spec.coerce(value) if spec is not None else value

    def _check_parameters(self, params) -> SetParametersResult:
        """Refuse values of the wrong type or out of range (at start-up and on ``ros2 param set``)."""
        for param in params:
            spec = BY_NAME.get(param.name)
            reason = spec.check(param.value) if spec is not None else None
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            topics = list(self.param("image_topics"))
            sources = depth_sources(topics, self.param("depth_topics"), self.param("right_image_topics"))
            for topic in topics + [t for _, t in sources.values()]:
                self._resolve(topic)
            self._cfg = node_config(self.param)
            if sources and not self._cfg.verification.enabled:
                self.get_logger().warning("depth_topics / right_image_topics serve verification only: set verify "
                                          "to true; not subscribed")
                sources = {}
            missing = ["checkpoint"] if not self.param("checkpoint") else []
            if self._cfg.loop_closure.searches_map and not self.param("map_path"):
                missing.append("map_path")
            if missing:
                self.get_logger().error(
                    f"set the parameter(s) {missing}, e.g. --ros-args -p map_path:=maps/run1 (mode "
                    f"{self._cfg.loop_closure.mode!r}; mode loop_closure needs no map)")
                return TransitionCallbackReturn.FAILURE
            self._check_extrinsics(len(topics))
            self._paths = {"map": self.param("map_path"), "checkpoint": self.param("checkpoint")}
            # the counters of these cameras from now on: /diagnostics has their keys while the model loads
            self.stats = NodeStats(topics, depth_cameras=sources)
            self._depth = DepthInput(sources, self.param("depth_tolerance_s"), self.stats, self._report_input,
                                     self._cfg.localizer.max_image_pixels, self._cfg.verification.max_depth_m) \
                if sources else None
            self._load(len(topics))
        except Exception as exc:  # noqa: BLE001 - reported as a failed transition
            self._last_error = f"configure failed: {_describe(exc)}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self._last_error = ""
        self._topics = topics
        pub = self.create_lifecycle_publisher
        self._pubs = {
            "candidates": pub(Float64MultiArray, "~/candidates", 10),
            "loop_closure": pub(Float64MultiArray, "~/loop_closure", 10),
            "candidate_poses": pub(PoseArray, "~/candidate_poses", 10),
            "match_image": pub(Image, "~/match_image", 1),
            "loop_closure_edges": pub(Float64MultiArray, "~/loop_closure_edges", 10),
            "pose": pub(PoseWithCovarianceStamped, "~/pose", 10),
            "initialpose_out": pub(PoseWithCovarianceStamped, "~/initialpose_out", 1),
        }
        from vlad_localization.verification.map_pose import InitialPoseGate

        self._initialpose = InitialPoseGate()
        if self._tf is not None:
            self._tf.close()
        self._tf = TfExtrinsics(self, self.param("base_frame"), len(topics)) \
            if self.param("camera_to_base_from_tf") else None
        return super().on_configure(state)

    def _check_extrinsics(self, cameras: int) -> None:
        """camera_to_base gives every camera an extrinsic (or none); TF, when asked for, is importable."""
        given = len(self.param("camera_to_base")) // 7
        if given not in (0, cameras):
            raise ValueError(f"camera_to_base holds {given} extrinsic(s) for {cameras} image_topics: give "
                             "[x, y, z, qx, qy, qz, qw] for every camera, or [] for identity")
        missing = tf2_missing() if self.param("camera_to_base_from_tf") else None
        if missing:
            raise ValueError(missing)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self._inference is None:  # ended on deactivate (GPU)
                self._load(len(self._topics))
        except Exception as exc:  # noqa: BLE001
            self._last_error = f"activate failed: {_describe(exc)}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self._worker = LatestFrameWorker(len(self._topics), self._process, self._worker_error)
        qos = QoSProfile(depth=1, reliability=self._reliability(),
                         durability=qos_profile_sensor_data.durability,
                         history=qos_profile_sensor_data.history)
        try:
            for camera, topic in enumerate(self._topics):
                msg_type = CompressedImage if self._is_compressed(topic) else Image
                self._subs.append(self.create_subscription(
                    msg_type, topic, lambda msg, c=camera: self._on_image(c, msg), qos))
                self.get_logger().info(f"camera {camera}: {topic} ({msg_type.__name__}, {qos.reliability.name})")
            if self.param("odom_topic"):
                self._odom_sub = self.create_subscription(Odometry, self.param("odom_topic"), self._on_odom, 50)
            if self._cfg.verification.enabled:
                for camera, topic in enumerate(self._topics):
                    self._info_subs.append(self.create_subscription(
                        CameraInfo, messages.camera_info_topic(topic), lambda m, c=camera: self._on_camera_info(c, m), 5))
            if self._depth is not None:
                self._subscribe_depth(self._depth, QoSProfile(depth=5, reliability=qos.reliability,
                                                              durability=qos.durability, history=qos.history))
        except Exception as exc:  # noqa: BLE001 - no half-active node: undo what was started
            self._stop_input()
            self.get_logger().error(f"activate failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        if self._inference is not None and self._device().startswith(("cuda", "mps")):
            self._release()  # frees GPU memory (and this run's keyframes); activate loads again
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._destroy_publishers()
        return super().on_cleanup(state)

    def _destroy_publishers(self) -> None:
        pubs, self._pubs = self._pubs, {}
        for pub in pubs.values():
            self.destroy_lifecycle_publisher(pub)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: drop everything and go back to unconfigured (configure starts afresh)."""
        self.get_logger().error(f"error in lifecycle state {state.label!r}: stopping input and releasing the model")
        self._stop_input()
        self._release()
        self._destroy_publishers()
        return TransitionCallbackReturn.SUCCESS

    def stop(self) -> bool:
        """Stop input, the worker and the inference process (process exit); False if a frame was
        still being prepared."""
        self._stopped.set()
        stopped = self._stop_input()
        self._release()
        return stopped

    # -- model / map -------------------------------------------------------------------------------
    def _load(self, num_cameras: int, restart_of: int | None = None) -> None:
        """Start the inference process with the configuration read at configure and wait until it
        has loaded the model and map (raises with its error). ``restart_of``: the generation of the
        process that died (the restart is dropped if the node released it since)."""
        if restart_of is None:
            self._release()  # a configure after an error: never two models at once
        t0 = time.monotonic()
        spec = InferenceSpec(self._factory, self._cfg, self._paths["checkpoint"], self._paths["map"])
        events = InferenceEvents(self._on_result, self._on_dropped, self._on_failed, self._on_inference_exit)
        inference = InferenceProcess(spec, num_cameras, events, isolate=self._isolate)
        with self._inference_lock:
            if restart_of is not None and restart_of != self._generation:
                raise InferenceError("restart cancelled: the node was deactivated or cleaned up")
            self._inference = inference  # stop() during the load ends it
            self._frame_params = None
        try:
            info = inference.start(cancelled=lambda: self._inference is not inference or self._stopped.is_set())
        except BaseException:
            with self._inference_lock:
                if self._inference is inference:
                    self._inference = None
            raise
        self.get_logger().info(
            f"loaded mode {self._cfg.loop_closure.mode}, map {self._paths['map'] if info['map_size'] else '-'} "
            f"({info['map_size']} keyframes), preset {self._cfg.name}, device {info['device']} in "
            f"{time.monotonic() - t0:.1f} s (inference process {inference.pid})")

    def _release(self) -> None:
        with self._inference_lock:
            inference, self._inference = self._inference, None
            self._generation += 1
        if inference is not None:
            inference.stop()

    def _device(self) -> str:
        inference = self._inference
        device = inference.info.get("device") if inference is not None else None
        return str(device or (self._cfg.model.device if self._cfg else "?"))

    # -- the inference process's events (its reader thread) ---------------------------------------
    def _on_inference_exit(self, inference: InferenceProcess, cause: str) -> None:
        """The inference process died: ERROR on /diagnostics, then a restart (bounded, with backoff)."""
        with self._inference_lock:
            if self._inference is not inference:  # already replaced or released
                return
            self._inference = None
            generation = self._generation
        for camera, lost in enumerate(inference.in_flight()):  # frames it took with it
            for _ in range(lost):
                self.stats.count("dropped", camera)
        inference.stop()
        threading.Thread(target=self._restart, args=(cause, generation), name="vlad_inference_restart",
                         daemon=True).start()

    def _restart(self, cause: str, generation: int) -> None:
        while not self._stopped.is_set() and generation == self._generation:
            attempt = self._restart_attempts + 1
            if attempt > MAX_RESTARTS:
                self._last_error = (f"inference process died ({cause}); gave up after {MAX_RESTARTS} restarts in a "
                                    "row: deactivate, clean up and configure the node again")
                self.get_logger().error(self._last_error)
                return
            self._restart_attempts = attempt
            self._last_error = f"inference process died ({cause}); restarting it ({attempt}/{MAX_RESTARTS})"
            self.get_logger().error(self._last_error)
            if self._stopped.wait(RESTART_DELAY_S * 2 ** (attempt - 1)) or generation != self._generation:
                return
            try:
                self._load(len(self._topics), restart_of=generation)
            except Exception as exc:  # noqa: BLE001 - counted as another death
                cause = _describe(exc)
                continue
            self._restarts += 1
            self._last_error = ""
            self.get_logger().info(f"inference process restarted ({self._restarts} restart(s) since configure)")
            return

    def _on_dropped(self, camera: int) -> None:
        self.stats.count("dropped", camera)

    def _on_failed(self, camera: int, text: str, rejections) -> None:
        self._report_rejections(camera, rejections)
        self._worker_error(RuntimeError(text))

    def _report_rejections(self, camera: int, rejections) -> None:
        for reason, text in rejections:  # depth the detector asked for and could not have
            if self._depth is not None:
                self._depth.reject(camera, reason, text)

    def _reload_map(self, request, response):
        inference = self._inference
        if inference is None or not inference.info or not self._cfg.loop_closure.searches_map:
            response.success, response.message = False, (
                "no prebuilt map loaded: configure (and on a GPU activate) the node first, in mode localize or both")
            return response
        try:  # between two frames of the inference process; the old map stays on failure
            path = self.param("map_path")
            size = inference.call("reload_map", path, self.param("verify_map"))
            inference.info["map_size"] = size
            self._paths["map"] = path  # what a re-activation on a GPU (or a restart) loads
        except Exception as exc:  # noqa: BLE001 - the old map stays loaded
            response.success, response.message = False, f"reload failed ({exc}); the previous map stays loaded"
            self._last_error = response.message
            self.get_logger().error(response.message)
            return response
        self._last_error = ""
        response.success, response.message = True, f"reloaded {self.param('map_path')}: {size} keyframes"
        self.get_logger().info(response.message)
        return response

    def _save_map(self, request, response):
        """``~/save_map``: this run's keyframes, written atomically to ``save_map_path``."""
        inference, path = self._inference, self.param("save_map_path")
        if not path:
            response.success, response.message = False, "set the parameter save_map_path first"
            return response
        if inference is None or not inference.info:
            response.success, response.message = False, "nothing to save: the node is not configured"
            return response
        try:
            sources = [f"{self.get_fully_qualified_name()}:{t}" for t in self._topics]
            keyframes = inference.call("save_map", path, sources)
        except Exception as exc:  # noqa: BLE001 - reported to the caller; the previous map at path stays
            response.success, response.message = False, f"save failed ({exc}); nothing written at {path}"
            return response
        response.success, response.message = True, f"saved {keyframes} keyframes to {path}"
        self.get_logger().info(response.message)
        return response

    # -- input ---------------------------------------------------------------------------------------
    def _reliability(self) -> QoSReliabilityPolicy:
        reliable = self.param("qos_reliability").lower() == "reliable"  # checked when set
        return QoSReliabilityPolicy.RELIABLE if reliable else QoSReliabilityPolicy.BEST_EFFORT

    def _resolve(self, topic: str) -> str:
        try:
            return self.resolve_topic_name(topic)
        except Exception as exc:  # noqa: BLE001 - rclpy raises its own exception types for bad names
            raise ValueError(f"image_topics: {topic!r} is not a valid ROS topic name ({exc})") from None

    def _is_compressed(self, topic: str) -> bool:
        mode = self.param("compressed")
        if mode in ("true", "false"):
            return mode == "true"
        resolved = self._resolve(topic)
        types = dict(self.get_topic_names_and_types()).get(resolved, [])
        if COMPRESSED_TYPE in types or RAW_TYPE in types:
            return COMPRESSED_TYPE in types
        return resolved.rstrip("/").endswith("/compressed")

    def _on_image(self, camera: int, msg) -> None:
        """Executor callback: count, rate-limit and hand the message to the worker (never blocks)."""
        self.stats.count("received", camera)
        stamp = msg.header.stamp
        if stamp.sec == 0 and stamp.nanosec == 0:  # an unstamped driver: the receive time, as `replay` uses
            msg.header.stamp = self.get_clock().now().to_msg()
        max_rate = float(self.param("max_rate_hz"))
        now = time.monotonic()
        if max_rate > 0 and now - self._last_accept.get(camera, -1e9) < 1.0 / max_rate:
            self.stats.count("rate_limited", camera)
            return
        self._last_accept[camera] = now
        worker, depth = self._worker, self._depth
        pending = None if depth is None else depth.frame_arrived(camera, messages.stamp_to_ns(msg.header.stamp))
        if worker is not None and worker.put(camera, (msg, pending)):
            self.stats.count("dropped", camera)

    def _subscribe_depth(self, depth: DepthInput, qos: QoSProfile) -> None:
        """Each camera's depth image topic, or right image topic and the CameraInfo beside it."""
        for camera, (kind, topic) in depth.sources.items():
            msg_type = CompressedImage if kind == "stereo" and self._is_compressed(topic) else Image
            self._depth_subs.append(self.create_subscription(
                msg_type, topic, lambda m, c=camera: depth.on_message(c, m), qos))
            if kind == "stereo":
                self._depth_subs.append(self.create_subscription(
                    CameraInfo, messages.camera_info_topic(topic), lambda m, c=camera: depth.on_info(c, m, "right"), 5))
            self.get_logger().info(f"camera {camera}: {'depth' if kind == 'depth' else 'stereo right image'} {topic}")

    def _on_odom(self, msg: Odometry) -> None:
        """Executor callback: keep the pose for interpolation at image stamps."""
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        pose = Pose((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        with self._poses_lock:
            self._poses.append(messages.stamp_to_ns(msg.header.stamp), pose, keep=ODOM_KEEP)
            self._poses_lock.notify_all()

    def _on_camera_info(self, camera: int, msg: CameraInfo) -> None:
        """Executor callback: the camera's intrinsics for verification (a bad CameraInfo is reported)."""
        if self._depth is not None:
            self._depth.on_info(camera, msg)
        try:
            self._cameras[camera] = messages.camera_from_info(msg)[0]
        except ValueError as exc:
            self.get_logger().warning(f"camera {camera}: {exc}", throttle_duration_sec=WARN_PERIOD_S)

    def _pose_at(self, stamp_ns: int) -> Pose | None:
        """The frame's pose from odometry; when odometry has not reached the frame's stamp yet (it
        travels on another topic), wait up to ODOM_WAIT_S for it."""
        if self._odom_sub is None:
            return None
        with self._poses_lock:
            self._poses_lock.wait_for(lambda: self._poses.stamps and self._poses.stamps[-1] >= stamp_ns, ODOM_WAIT_S)
            return self._poses.at(stamp_ns, ODOM_TOLERANCE_NS)

    def _stop_input(self) -> bool:
        for sub in self._subs + self._info_subs + self._depth_subs + ([self._odom_sub] if self._odom_sub else []):
            self.destroy_subscription(sub)
        self._subs, self._info_subs, self._depth_subs, self._odom_sub = [], [], [], None
        worker, self._worker = self._worker, None
        return worker.stop(STOP_TIMEOUT_S) if worker is not None else True

    def _report_input(self, reason: str, text: str) -> None:
        """Count a bad input by reason (``rejected[<reason>]``) and warn, throttled per reason."""
        self.stats.count("rejected", reason)
        # one logger object per reason: rclpy throttles per logger and call site
        logger = self._input_loggers.setdefault(reason, self.get_logger().get_child("input"))
        logger.warning(text, throttle_duration_sec=WARN_PERIOD_S)

    def _worker_error(self, exc: BaseException) -> None:
        if not self.context.ok():  # shutting down mid-frame: publishing failed, nothing to report
            return
        self.stats.count("rejected", "inference_error")
        self.get_logger().error(f"query failed: {type(exc).__name__}: {exc}", throttle_duration_sec=WARN_PERIOD_S)

    # -- work: the worker thread prepares a frame, the inference process answers -----------------
    def _process(self, camera: int, item) -> None:
        """Convert the newest frame of ``camera``, wait for its pose and depth, send it."""
        msg, pending_depth = item
        try:
            rgb = msg_to_rgb(msg, self._cfg.localizer.max_image_pixels)
        except ImageConversionError as exc:
            self._report_input(exc.reason, f"rejected a frame from {self._topics[camera]}: {exc}")
            return
        stamp_ns = messages.stamp_to_ns(msg.header.stamp)
        pose = self._pose_at(stamp_ns)
        depth = None if self._depth is None else self._depth.depth_for(camera, pending_depth, rgb)
        if self._tf is not None and (why := self._tf.lookup(camera, msg.header.frame_id)):
            self.get_logger().warning(f"camera {camera}: {why}; no ~/pose until then",
                                      throttle_duration_sec=WARN_PERIOD_S)
        inference = self._inference
        if inference is None or not inference.info:  # (re)starting
            self.stats.count("dropped", camera)
            return
        self._apply_frame_params(inference)
        arrays, stereo = {"image": rgb}, None
        if isinstance(depth, StereoPair):
            stereo = depth.without_right()
            if depth.right is not None:
                arrays["right"] = depth.right
        elif depth is not None:
            arrays["depth"] = depth
        meta = FrameMeta(stamp_ns, pose, self._cameras.get(camera), stereo, self._match_image_wanted())
        if not inference.submit(camera, arrays, meta):
            self.stats.count("dropped", camera)

    def _on_result(self, camera: int, result, extras: dict) -> None:
        """A :class:`FrameResult` from the inference process: publish it (a result still in flight when
        SIGINT/SIGTERM shut the context down is dropped, not a traceback)."""
        try:
            self._publish_result(camera, result, extras)
        except Exception:
            if self.context.ok():
                raise

    def _publish_result(self, camera: int, result, extras: dict) -> None:
        self._restart_attempts = 0
        self._report_rejections(camera, extras.get("rejections", ()))
        if not self._pubs:  # cleaned up while this frame was being processed
            return
        header = Header(stamp=messages.ns_to_stamp(result.stamp_ns), frame_id=self.param("map_frame"))
        closure = result.loop_closure
        if closure is not None:
            self._pubs["loop_closure"].publish(
                messages.loop_closure_msg(closure.query_stamp_ns, closure.match_stamp_ns))
            c = closure.candidate
            self.get_logger().info(
                f"loop closure: camera {camera} t={seconds(closure.query_stamp_ns):.3f} -> {c.store.label} keyframe "
                f"{c.map_id} t={seconds(closure.match_stamp_ns):.3f} (score {c.score:.3f})")
            self._publish_edge(closure, result.relative_pose)
            self._publish_map_pose(header, closure, result.relative_pose)
        if any(c.pose is not None for c in result.candidates):
            self._pubs["candidate_poses"].publish(messages.pose_array_msg(header, result.candidates))
        self._pubs["candidates"].publish(messages.candidates_msg(result.stamp_ns, camera, result.candidates))
        if extras.get("match_image") is not None:
            self._pubs["match_image"].publish(messages.image_msg(Header(stamp=header.stamp), extras["match_image"]))
        self.stats.frame_done(result.timings, closure is not None, result.decision.status)
        self._warn_if_full(extras.get("stats", {}))

    def _publish_edge(self, closure, pose) -> None:
        """``~/loop_closure_edges`` for a verified closure; a rejected one is counted by reason."""
        if pose is None:
            return
        self.stats.count("verified", pose.status)
        if not pose.ok:
            return
        self.stats.count("edges", "metric" if pose.metric else "monocular")
        c = closure.candidate
        self._pubs["loop_closure_edges"].publish(messages.loop_closure_edge_msg(
            closure.query_stamp_ns, c.stamp_ns, c.map_id, c.store, pose, c.score))

    def _publish_map_pose(self, header: Header, closure, pose) -> None:
        """``~/pose`` for a closure verified against a prebuilt map keyframe with a pose, and
        ``~/initialpose_out`` when enabled and the policy accepts it (counted by outcome)."""
        map_pose = getattr(pose, "map_pose", None)
        if map_pose is None or (self._tf is not None and self._tf.camera_to_base() is None):
            return
        msg = messages.pose_with_covariance_msg(header, map_pose)
        self._pubs["pose"].publish(msg)
        self.stats.count("map_poses", "metric" if map_pose.metric else "monocular")
        if self.param("publish_initialpose"):
            from vlad_localization.verification.map_pose import InitialPosePolicy

            policy = InitialPosePolicy(*(self.param(f"initialpose_{k}") for k in (
                "min_score", "max_position_std_m", "max_rotation_std_deg", "min_interval_s")))
            outcome = self._initialpose.offer(messages.stamp_to_ns(header.stamp), map_pose,
                                              closure.candidate.score, policy)
            self.stats.count("initialpose", outcome)
            if outcome == "published":
                self._pubs["initialpose_out"].publish(msg)

    def _apply_frame_params(self, inference: InferenceProcess) -> None:
        """Parameters read for every frame (score_threshold, min_time_gap_s, ...) to the inference
        process's configuration (``config.apply_overrides``) when they changed."""
        values = config_overrides(self.param, every_frame=True)
        if self._tf is not None:  # the extrinsics from TF, once known, replace camera_to_base
            values["verification.camera_to_base"] = self._tf.camera_to_base() or values["verification.camera_to_base"]
        if (inference, values) != self._frame_params:
            inference.apply_overrides(values)
            self._frame_params = (inference, values)

    def _warn_if_full(self, stats: dict) -> None:
        now = time.monotonic()
        if stats.get("run_full") and now - self._full_warned >= FULL_WARN_PERIOD_S:
            self._full_warned = now
            lc = self._cfg.loop_closure
            self.get_logger().warning(
                f"this run's keyframe store is full ({stats['run_keyframes']} keyframes, max_keyframes "
                f"{lc.max_keyframes}): " + ("the oldest are evicted" if lc.eviction == "oldest" else
                                            "new keyframes are refused") + "; raise max_keyframes or save the map")

    def _match_image_wanted(self) -> bool:
        """~/match_image is computed only while wanted and subscribed."""
        pub = self._pubs.get("match_image")
        return bool(pub is not None and self.param("publish_match_image") and pub.get_subscription_count() > 0)

    # -- diagnostics ---------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        if not self.context.ok():  # shutting down
            return
        state = self._state_machine.current_state[1]  # (id, label)
        values = {"state": str(state), "device": self._device()}
        inference = self._inference
        info = inference.info if inference is not None else {}
        loaded = bool(info)
        values["mode"] = self._cfg.loop_closure.mode if self._cfg is not None else "?"
        values["map_size"] = str(info.get("map_size", 0))
        values["gpu_memory_mb"] = str(info.get("gpu_memory_mb", "n/a"))
        values.update({k: str(v) for k, v in info.get("stats", {}).items()})
        values.update(self.stats.snapshot())
        values["inference_pid"] = str(info.get("pid", ""))
        values["inference_restarts"] = str(self._restarts)
        if self._cfg is not None and self._cfg.verification.enabled:  # whether verification has intrinsics
            values.update({f"camera_info[{t}]": "yes" if i in self._cameras else "no" for i, t in enumerate(self._topics)})
        if self._depth is not None:
            values.update(self._depth.diagnostics(self.stats.cameras))
        recent = int(values["rejected_last_period"])
        values["last_error"] = self._last_error
        level = DiagnosticStatus.OK if loaded else DiagnosticStatus.WARN
        message = "ok" if loaded else "no model loaded (not configured)"
        if self._last_error:  # e.g. a damaged map refused at configure, or by ~/reload_map
            level = DiagnosticStatus.WARN if loaded else DiagnosticStatus.ERROR
            message = self._last_error
        elif loaded and values.get("run_full") == "1":
            level, message = DiagnosticStatus.WARN, "this run's keyframe store is full (max_keyframes)"
        elif recent and loaded:
            level, message = DiagnosticStatus.WARN, f"{recent} bad frame(s) rejected in the last second"
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(),
                                                f"{self.get_name()}: loop closure", level, message, values))


def _autostart(node: VladLocalizationNode) -> None:
    """configure + activate (what a lifecycle manager would do); errors are logged, never raised."""
    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: configure failed (see above); waiting for a lifecycle manager")
        elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error("autostart: activate failed (see above)")
    except Exception as exc:  # noqa: BLE001 - e.g. the context shut down (SIGINT) while loading
        if node.context.ok():
            node.get_logger().error(f"autostart failed: {type(exc).__name__}: {exc}")


def run(args: list[str] | None = None) -> bool:
    """Spin the node until SIGINT/SIGTERM (rclpy's handlers), then stop it (and its inference
    process) and rclpy. Returns False when a frame was still being prepared on the worker thread
    (it is abandoned, not joined)."""
    rclpy.init(args=args)
    node = VladLocalizationNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if node.param("autostart"):  # from the executor, so SIGINT/SIGTERM are handled while the model loads
        threading.Thread(target=_autostart, args=(node,), name="vlad_autostart", daemon=True).start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - a callback racing the signal's shutdown (e.g. publishing diagnostics)
        if node.context.ok():
            raise
    finally:
        stopped = node.stop()
        executor.shutdown(timeout_sec=0.2)
        node.destroy_node()
        rclpy.try_shutdown()
    return stopped


def main(args: list[str] | None = None) -> int:
    """Console entry point (``vlad_localization_node``): :func:`run`, then exit at once.

    The process exits with ``os._exit`` after the node and rclpy are shut down: the interpreter's
    teardown of torch/faiss takes over a second and would miss the 2 s shutdown budget."""
    run(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
