"""The node's parameters: one table (name, default, description, configuration key) used to declare
them, to check ``config/vlad_localization.yaml``, to document them and to turn them into the
library's :class:`~vlad_localization.config.Config` (through ``config.apply_overrides``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlad_localization.choices import MATCHERS, MODES, names
from vlad_localization.config import LoopClosureConfig, extrinsics_problem
from vlad_localization.images.stamp_match import DEFAULT_TOLERANCE_S

_LC = LoopClosureConfig()  # the node's loop-closure defaults are the library's


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    on_configure: bool = False  # read on configure; else read for every frame
    choices: tuple[str, ...] = ()  # for text parameters: the values allowed ('' always allowed when the default)
    config: str | None = None  # the configuration key it sets ("section.field"), if any
    keep: Any = None  # the value that keeps the preset's (0 or '')
    item: type = str  # the type of a list parameter's items (str or float)

    @property
    def dynamic(self) -> bool:
        """Declared with dynamic typing: a number may be written 5 or 5.0, ``compressed`` true or 'true',
        a list empty by default given as strings (rclpy would type ``[]`` a byte array)."""
        return isinstance(self.default, float) or self.name == "compressed" or self.default == []

    def check(self, value) -> str | None:
        """Why ``value`` is not acceptable for this parameter (None when it is)."""
        if isinstance(self.default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{self.name} must be a number, got {value!r}"
        if isinstance(self.default, float) and value < 0 and value != self.keep:
            return f"{self.name} must be >= 0, got {value!r}"
        if isinstance(self.default, list) and value is not None and not (
                isinstance(value, (list, tuple)) and all(_is_a(v, self.item) for v in value)):
            return f"{self.name} must be a list of {'numbers' if self.item is float else 'strings'}, got {value!r}"
        if self.config == "verification.camera_to_base" and value:
            problem = extrinsics_problem(value)
            return f"{self.name} {problem}" if problem else None
        if self.choices and str(value).lower() not in self.choices and not (value == "" and self.default == ""):
            return f"{self.name} must be one of {' | '.join(self.choices)}, got {value!r}"
        return None

    def coerce(self, value):
        """The value as the node uses it: floats as float, ``compressed`` as 'auto' | 'true' | 'false'."""
        if isinstance(self.default, float):
            return float(value)
        if self.name == "compressed":
            return str(value).lower()
        if isinstance(self.default, list):  # `[]` in a YAML file or on the command line reads as unset
            return [] if value is None else [self.item(v) for v in value]
        return value


def _is_a(value, item: type) -> bool:
    if item is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, item)


PARAMETERS: tuple[Param, ...] = (
    Param("mode", "", f"{names(MODES)} ('' = the preset's loop_closure.mode, localize unless set): "
          "search the prebuilt map, this run's own keyframes, or both.", True, choices=tuple(MODES),
          config="loop_closure.mode", keep=""),
    Param("map_path", "", "Map directory built by `vlad-localization build-map` (required by modes localize "
          "and both).", True),
    Param("checkpoint", "", "Patch-NetVLAD checkpoint (.pth.tar) the map was built with, or a name from "
          "`vlad-localization download-weights --list` read from the cache (required).", True),
    Param("preset", "speed", "Configuration: performance | speed | storage, or a YAML file path.", True),
    Param("device", "auto", "Torch device: auto | cpu | cuda | cuda:N | mps.", True, config="model.device"),
    Param("half", False, "fp16 inference (CUDA only).", True, config="model.half"),
    Param("image_topics", ["/camera/image_raw"],
          "Camera topics; the index in this list is the `camera` column of ~/candidates.", True),
    Param("compressed", "auto",
          "auto | true | false. auto: sensor_msgs/CompressedImage when the topic is advertised "
          "with that type or its name ends in /compressed, else sensor_msgs/Image.", True,
          choices=("auto", "true", "false")),
    Param("qos_reliability", "best_effort", "Image subscription reliability: best_effort | reliable "
          "(sensor-data QoS, depth 1).", True, choices=("best_effort", "reliable")),
    Param("odom_topic", "", "nav_msgs/Odometry topic ('' = none): poses interpolated to each image stamp, for "
          "keyframe distance, min_travel_m and the keyframes' poses.", True),
    Param("depth_topics", [], "Registered depth images (sensor_msgs/Image 16UC1 in mm or 32FC1 in m, aligned "
          "with the colour image, at its size or scaled), one per image_topics entry ('' = none): each frame takes "
          "the depth nearest in stamp within depth_tolerance_s; with verify, the run's keyframes keep it and a "
          "closure against them is metric (PnP). A bad depth is counted (rejected[depth_<reason>]) and the frame "
          "processed without.", True),
    Param("right_image_topics", [], "Right images of calibrated stereo pairs, one per image_topics entry ('' = "
          "none), with the CameraInfo beside them (P[0,3] = -fx * baseline) and the left image's: depth from the "
          "pair (SGBM), computed only for a new keyframe or a closure that needs it (with verify).", True),
    Param("depth_tolerance_s", DEFAULT_TOLERANCE_S, "A frame takes the depth (or right) image nearest in stamp within this many "
          "s (0 = equal stamps only).", True),
    Param("max_rate_hz", 0.0, "Per-camera processing rate cap in Hz (0 = as fast as the model runs)."),
    Param("top_k", 0, "Global (NetVLAD) candidates retrieved from the map (0 = the preset's value).", True,
          config="localizer.top_k", keep=0),
    Param("rerank_k", 0, "Candidates re-ranked by patch matching (0 = the preset's value).", True,
          config="localizer.rerank_k", keep=0),
    Param("matcher", "", f"Patch matcher: {names(MATCHERS)} ('' = the preset's value).", True,
          choices=tuple(MATCHERS), config="matching.matcher", keep=""),
    Param("score_threshold", -1.0,
          "Minimum candidate score in [0, 1] (fused P(same place) when computed, else the patch score) for a "
          "~/loop_closure (-1 = the preset's loop_closure.score_threshold, 0.744 in the shipped presets).",
          config="loop_closure.score_threshold", keep=-1.0),
    Param("min_time_gap_s", _LC.min_time_gap_s,
          "Loop closures and the run's own search skip keyframes less than this many s before the frame.",
          config="loop_closure.min_time_gap_s"),
    Param("min_travel_m", _LC.min_travel_m,
          "... and (with odometry) less than this many m back along the trajectory (0 = off).",
          config="loop_closure.min_travel_m"),
    Param("consistency", 0, "Temporal consistency: a loop closure needs this many consecutive frames whose "
          "confident proposals agree (1 = each frame on its own; 0 = the preset's loop_closure.consistency). "
          "Held-back proposals are counted on /diagnostics (decisions[inconsistent]).", True,
          config="loop_closure.consistency", keep=0),
    Param("consistency_window_s", -1.0, "Agreeing proposals: the matched keyframe advances by at most this many "
          "s from one frame to the next (-1 = the preset's loop_closure.consistency_window_s).", True,
          config="loop_closure.consistency_window_s", keep=-1.0),
    Param("consistency_window_m", -1.0, "... or, > 0 and with keyframe positions, lies within this many m of the "
          "previous match (-1 = the preset's loop_closure.consistency_window_m).", True,
          config="loop_closure.consistency_window_m", keep=-1.0),
    Param("sequence_length", -1, "Sequence scoring: rank candidates by the mean similarity of the camera's last "
          "this-many frames along each candidate's run (SeqSLAM; 0 = off, -1 = the preset's "
          "loop_closure.sequence_length).", True, config="loop_closure.sequence_length", keep=-1),
    Param("keyframe_min_distance_m", 0.0, "This run's keyframes: at least this far apart (with odometry; "
          "0 = the preset's map.min_distance_m).", True, config="map.min_distance_m", keep=0.0),
    Param("keyframe_min_time_gap_s", 0.0, "This run's keyframes: at least this many s apart (0 = the preset's "
          "map.min_time_gap_s).", True, config="map.min_time_gap_s", keep=0.0),
    Param("max_keyframes", 0, "Bound of this run's keyframe store (0 = the preset's loop_closure.max_keyframes); "
          "then loop_closure.eviction (oldest first by default).", True, config="loop_closure.max_keyframes", keep=0),
    Param("verify", False, "Verify each loop closure geometrically and publish ~/loop_closure_edges (relative "
          "pose + covariance); intrinsics from the CameraInfo beside each image topic, else the preset's "
          "verification.intrinsics.", True, config="verification.enabled"),
    Param("camera_to_base", [], "Each camera's optical frame in the robot's base frame, [x, y, z, qx, qy, qz, qw] "
          "per image_topics entry, flattened (numbers written with a decimal point; [] = the preset's "
          "verification.camera_to_base, identity unless set): ~/pose is the base's pose.",
          config="verification.camera_to_base", keep=[], item=float),
    Param("camera_to_base_from_tf", False, "Read camera_to_base from TF instead (base_frame <- each image's "
          "header.frame_id; needs tf2_ros, a ROS 2 install).", True),
    Param("base_frame", "base_link", "The robot's base frame, for camera_to_base_from_tf.", True),
    Param("publish_initialpose", False, "Republish accepted ~/pose messages on ~/initialpose_out (remap it to "
          "Nav2's /initialpose), at most one per initialpose_min_interval_s."),
    Param("initialpose_min_score", 0.97, "~/initialpose_out: minimum loop-closure score in [0, 1]."),
    Param("initialpose_max_position_std_m", 0.5, "~/initialpose_out: maximum position standard deviation (m, "
          "least certain direction; a monocular pose has verification.monocular_baseline_m)."),
    Param("initialpose_max_rotation_std_deg", 5.0, "~/initialpose_out: maximum rotation standard deviation (deg)."),
    Param("initialpose_min_interval_s", 5.0, "~/initialpose_out: at least this many s (query stamps) apart."),
    Param("save_map_path", "", "Where ~/save_map writes this run's keyframes as a map directory.", True),
    Param("map_frame", "map", "frame_id of ~/candidate_poses and ~/pose: the frame of the map's keyframe poses "
          "(for a map built with odometry, the mapping run's odometry frame)."),
    Param("publish_match_image", True, "Publish ~/match_image (computed only while subscribed)."),
    Param("autostart", True, "Configure and activate on start-up (no lifecycle manager needed).", True),
    Param("verify_map", False, "Check every byte of the map against its manifest's sha256 at configure and "
          "on ~/reload_map (reads the whole map; sizes and structure are always checked).", True,
          config="map.verify_on_open"),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
BY_NAME = {p.name: p for p in PARAMETERS}


def config_overrides(get, every_frame: bool = False) -> dict[str, Any]:
    """{"section.field": value} of the parameters with a configuration key (``get(name)`` reads
    one); a parameter at its ``keep`` value keeps the preset's. ``every_frame``: only those read
    for every frame (the rest apply at configure)."""
    out = {}
    for p in PARAMETERS:
        if p.config is None or (every_frame and p.on_configure):
            continue
        value = get(p.name)
        out[p.config] = None if p.keep is not None and value == p.keep else value
    return out


def markdown_table() -> str:
    """The parameters as a Markdown table (generated into docs/ros.md)."""
    rows = ["| parameter | default | read | description |", "|---|---|---|---|"]
    rows += [
        f"| `{p.name}` | `{p.default!r}` | {'configure' if p.on_configure else 'every frame'} "
        f"| {p.description.replace('|', chr(92) + '|')} |"
        for p in PARAMETERS
    ]
    return "\n".join(rows)
