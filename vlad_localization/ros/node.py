"""``vlad_localization_node``: the ROS 2 lifecycle node. It only translates: image (and odometry)
messages in, :meth:`LoopClosureDetector.process <vlad_localization.detector.LoopClosureDetector.process>`
on a worker thread, standard messages out.

Lifecycle (``rclpy.lifecycle``): configure loads the model and map; activate subscribes and starts
the worker; deactivate unsubscribes, stops the worker and frees GPU memory; cleanup drops
everything. ``autostart`` (default true) runs configure + activate at start-up so ``ros2 run``
works without a lifecycle manager. Topics, parameters and diagnostics: see the README.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray, Header
from std_srvs.srv import Trigger

from vlad_localization.images.convert import ImageConversionError, msg_to_rgb
from vlad_localization.images.frames import Pose, PoseTrack
from vlad_localization.mapdb.integrity import verify_map
from vlad_localization.ros import messages
from vlad_localization.ros.depth_input import DepthInput, depth_sources
from vlad_localization.ros.diagnostics import NodeStats, diagnostic_array
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


def node_config(get):
    """The library :class:`Config` for the node's parameters (``get(name)`` reads one)."""
    from vlad_localization.config import apply_overrides, load_config

    return apply_overrides(load_config(get("preset")), config_overrides(get), where="node parameters")


def load_detector(cfg, checkpoint: str, map_path: str):
    """The default detector factory: :meth:`LoopClosureDetector.from_config`."""
    from vlad_localization.detector import LoopClosureDetector

    return LoopClosureDetector.from_config(cfg, checkpoint, map_path or None)


class VladLocalizationNode(LifecycleNode):
    """Patch-NetVLAD loop-closure candidates for every camera frame (newest frame only)."""

    def __init__(self, node_name: str = NODE_NAME, detector_factory=load_detector, **kwargs):
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
        self._detector = None
        self._det_lock = threading.Lock()  # a frame vs replacing or releasing the detector
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
            self._load()
        except Exception as exc:  # noqa: BLE001 - reported as a failed transition
            self._last_error = f"configure failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self._last_error = ""
        self._topics = topics
        self.stats = NodeStats(self._topics, depth_cameras=sources)
        self._depth = DepthInput(sources, self.param("depth_tolerance_s"), self.stats, self._report_input,
                                 self._cfg.localizer.max_image_pixels, self._cfg.verification.max_depth_m) \
            if sources else None
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
            if self._detector is None:  # released on deactivate (GPU)
                self._load()
        except Exception as exc:  # noqa: BLE001
            self._last_error = f"activate failed: {type(exc).__name__}: {exc}"
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
        if self._detector is not None and self._device().startswith(("cuda", "mps")):
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
        """Stop input and the worker (process exit); False if a frame is still in progress."""
        return self._stop_input()

    # -- model / map -------------------------------------------------------------------------------
    def _load(self) -> None:
        self._release()  # a configure after an error: never two models at once
        t0 = time.monotonic()
        if self.param("verify_map") and self._cfg.loop_closure.searches_map:
            verify_map(self._paths["map"])
        detector = self._factory(self._cfg, self._paths["checkpoint"], self._paths["map"])  # as configured
        with self._det_lock:
            self._detector = detector
            self._frame_params = None
        size = detector.map.size if detector.map is not None else 0
        self.get_logger().info(
            f"loaded mode {self._cfg.loop_closure.mode}, map {self._paths['map'] if detector.map else '-'} "
            f"({size} keyframes), "
            f"preset {self._cfg.name}, device {self._device()} in {time.monotonic() - t0:.1f} s")

    def _release(self) -> None:
        with self._det_lock:
            detector, self._detector = self._detector, None
        if detector is not None:
            detector.release()

    def _device(self) -> str:
        localizer = getattr(self._detector, "localizer", None)
        device = getattr(getattr(localizer, "encoder", None), "device", None)
        return str(device or (self._cfg.model.device if self._cfg else "?"))

    def _reload_map(self, request, response):
        detector = self._detector
        if detector is None or detector.map is None:
            response.success, response.message = False, (
                "no prebuilt map loaded: configure (and on a GPU activate) the node first, in mode localize or both")
            return response
        try:  # Localizer.reload_map is safe beside a running query (the map swap is atomic)
            path = self.param("map_path")
            if self.param("verify_map"):
                verify_map(path)
            size = detector.localizer.reload_map(path).size
            self._paths["map"] = path  # what a re-activation on a GPU loads
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
        detector, path = self._detector, self.param("save_map_path")
        if not path:
            response.success, response.message = False, "set the parameter save_map_path first"
            return response
        if detector is None:
            response.success, response.message = False, "nothing to save: the node is not configured"
            return response
        try:
            manifest = detector.save_map(path, sources=[f"{self.get_fully_qualified_name()}:{t}" for t in self._topics])
        except Exception as exc:  # noqa: BLE001 - reported to the caller; the previous map at path stays
            response.success, response.message = False, f"save failed ({exc}); nothing written at {path}"
            return response
        response.success, response.message = True, f"saved {manifest.keyframes} keyframes to {path}"
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

    # -- work (worker thread) ---------------------------------------------------------------------
    def _process(self, camera: int, item) -> None:
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
        with self._det_lock:
            detector = self._detector
            if detector is None:
                return
            self._apply_frame_params(detector)
            result = detector.process(stamp_ns, rgb, pose, camera, self._cameras.get(camera), depth)
            thumbnail = self._match_image_ref(result)
        if not self._pubs:  # cleaned up while this frame was being processed
            return
        header = Header(stamp=msg.header.stamp, frame_id=self.param("map_frame"))
        closure = result.loop_closure
        if closure is not None:
            self._pubs["loop_closure"].publish(messages.loop_closure_msg(closure.t_query, closure.t_match))
            c = closure.candidate
            self.get_logger().info(
                f"loop closure: camera {camera} t={closure.t_query:.3f} -> {'run' if c.source else 'map'} keyframe "
                f"{c.map_id} t={closure.t_match:.3f} (score {c.score:.3f})")
            self._publish_edge(closure, result.relative_pose)
            self._publish_map_pose(header, closure, result.relative_pose)
        if any(c.pose is not None for c in result.candidates):
            self._pubs["candidate_poses"].publish(messages.pose_array_msg(header, result.candidates))
        self._pubs["candidates"].publish(messages.candidates_msg(stamp_ns, camera, result.candidates))
        if thumbnail is not None:
            self._publish_match_image(header, rgb, result, thumbnail)
        self.stats.frame_done(result.timings, closure is not None, result.decision.status)
        self._warn_if_full(detector)

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
            closure.query_stamp_ns, c.stamp_ns, c.map_id, "run" if c.source else "prebuilt", pose, c.score))

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

    def _apply_frame_params(self, detector) -> None:
        """Parameters read for every frame (score_threshold, min_time_gap_s, ...) into the
        detector's configuration, through ``config.apply_overrides`` when they changed."""
        from vlad_localization.config import apply_overrides

        values = config_overrides(self.param, every_frame=True)
        if self._tf is not None:  # the extrinsics from TF, once known, replace camera_to_base
            values["verification.camera_to_base"] = self._tf.camera_to_base() or values["verification.camera_to_base"]
        if values != self._frame_params:
            detector.config = apply_overrides(detector.config, values, where="node parameters")
            self._frame_params = values

    def _warn_if_full(self, detector) -> None:
        stats = detector.stats()
        now = time.monotonic()
        if stats.get("run_full") and now - self._full_warned >= FULL_WARN_PERIOD_S:
            self._full_warned = now
            lc = self._cfg.loop_closure
            self.get_logger().warning(
                f"this run's keyframe store is full ({stats['run_keyframes']} keyframes, max_keyframes "
                f"{lc.max_keyframes}): " + ("the oldest are evicted" if lc.eviction == "oldest" else
                                            "new keyframes are refused") + "; raise max_keyframes or save the map")

    def _match_image_ref(self, result):
        """The best candidate's thumbnail when ~/match_image is wanted and subscribed, else None
        (from the map that was queried, even if ~/reload_map swapped another in since)."""
        pub = self._pubs.get("match_image")
        if not result.candidates or not self.param("publish_match_image") or pub.get_subscription_count() == 0:
            return None
        best = result.candidates[0]
        return result.query.store(best).thumbnail(best.map_id)

    def _publish_match_image(self, header: Header, rgb, result, thumbnail) -> None:
        from vlad_localization.matching.plot import draw_matches

        best, none = result.candidates[0], np.zeros((0, 2))
        canvas = draw_matches(rgb, thumbnail, none if best.query_keypoints is None else best.query_keypoints,
                              none if best.map_keypoints is None else best.map_keypoints,
                              image_hw=tuple(result.query.network_size))
        self._pubs["match_image"].publish(messages.image_msg(Header(stamp=header.stamp), canvas))

    # -- diagnostics ---------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        if not self.context.ok():  # shutting down
            return
        state = self._state_machine.current_state[1]  # (id, label)
        values = {"state": str(state), "device": self._device()}
        detector = self._detector
        loaded = detector is not None
        values["mode"] = self._cfg.loop_closure.mode if self._cfg is not None else "?"
        values["map_size"] = str(detector.map.size) if loaded and detector.map is not None else "0"
        values["gpu_memory_mb"] = _gpu_memory_mb(values["device"])
        values.update({k: str(v) for k, v in (detector.stats() if loaded else {}).items()})
        values.update(self.stats.snapshot())
        if self._cfg is not None and self._cfg.verification.enabled:  # whether verification has intrinsics
            values.update({f"camera_info[{t}]": "yes" if i in self._cameras else "no" for i, t in enumerate(self._topics)})
        if self._depth is not None:
            values.update(self._depth.diagnostics(self._topics))
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


def _gpu_memory_mb(device: str) -> str:
    if not device.startswith("cuda") or "torch" not in sys.modules:
        return "n/a"
    import torch

    return f"{torch.cuda.memory_allocated(device) / 2**20:.1f}"


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
    """Spin the node until SIGINT/SIGTERM (rclpy's handlers), then stop it and rclpy. Returns
    False when a query was still running on the worker thread (it is abandoned, not joined)."""
    rclpy.init(args=args)
    node = VladLocalizationNode()
    executor = MultiThreadedExecutor(num_threads=2)
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
