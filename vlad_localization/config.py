"""One typed configuration, shared by the library, the CLI and the ROS 2 node.

A configuration is a YAML file with up to four sections (``model``, ``matching``, ``map``,
``localizer``); anything left out keeps its default. The three official Patch-NetVLAD presets
(``performance``, ``speed``, ``storage``; same meaning as the official ``.ini`` files) ship as YAML
data in ``config/`` and are loaded by name::

    cfg = load_config("speed")            # a preset
    cfg = load_config("my_robot.yaml")    # a file, optionally ``base: speed`` to start from a preset
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

import math

from vlad_localization.choices import (
    BACKBONES,
    EVICTIONS,
    FUSED_FEATURES,
    FUSIONS,
    MATCHERS,
    MODES,
    RANSAC_BACKENDS,
    REFINEMENTS,
    SEQUENCE_KINDS,
    names,
    sequence_keys,
)

PRESETS = ("performance", "speed", "storage")


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message says which and why."""


@dataclass
class ModelConfig:
    """The Patch-NetVLAD encoder: backbone, NetVLAD pooling, patch sizes and WPCA."""

    backbone: str = "vgg16"  # vgg16 | resnet18 | resnet50
    num_clusters: int = 64
    num_pcs: int | None = 4096  # WPCA output dims; None = no WPCA (raw K*C VLAD)
    vladv2: bool = False
    normalize_input: bool = True
    patch_sizes: list[int] = field(default_factory=lambda: [2, 5, 8])
    strides: list[int] = field(default_factory=lambda: [1, 1, 1])
    image_height: int = 480  # network input size; 0 keeps the image's own size
    image_width: int = 640
    device: str = "auto"  # auto (cuda, mps, cpu) | cpu | cuda | cuda:N | mps
    half: bool = False  # fp16 on CUDA
    batch_size: int = 4

    def validate(self) -> None:
        if len(self.patch_sizes) != len(self.strides):
            raise ConfigError(
                f"model.patch_sizes {self.patch_sizes} and model.strides {self.strides} "
                "must have the same length"
            )
        if any(p < 1 for p in self.patch_sizes) or any(s < 1 for s in self.strides):
            raise ConfigError("model.patch_sizes and model.strides must be positive integers")
        if self.num_clusters < 1:
            raise ConfigError("model.num_clusters must be >= 1")
        _one_of("model.backbone", self.backbone, BACKBONES)
        _at_least("model", self, num_pcs=1, image_height=0, image_width=0, batch_size=1)


@dataclass
class MatchingConfig:
    """Patch matching and re-ranking (Hausler et al., Sec. 3.4-3.5)."""

    matcher: str = "ransac"  # ransac | spatial (the official "spatialApproximator")
    patch_weights: list[float] = field(default_factory=lambda: [0.45, 0.15, 0.4])
    fusion: str = "absolute"  # absolute ([0, 1]) | reference (official z-scores) | fused (P(same place))
    # fused: logistic coefficients (choices.FUSED_FEATURES + bias, optionally SEQUENCE_FEATURES; fusion_fit)
    fusion_model: dict[str, float] | None = None
    ransac_threshold_factor: float = 1.5  # reprojection threshold = stride * patch stride * this
    ransac_seed: int | None = 0  # seeds the batched RANSAC's draws (OpenCV 5's findHomography draws from a fixed seed)
    # auto | batched | opencv: where the RANSAC homographies run (choices.RANSAC_BACKENDS)
    ransac_backend: str = "auto"
    # threads scoring the candidates' matches with OpenCV's RANSAC at once (it releases the GIL; the
    # scores do not depend on it; the batched backend needs none); 0 = one per CPU core, at most 8;
    # 1 = in the calling thread
    workers: int = 0

    def validate(self, model: ModelConfig) -> None:
        _one_of("matching.matcher", self.matcher, MATCHERS)
        _one_of("matching.ransac_backend", self.ransac_backend, RANSAC_BACKENDS)
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ConfigError(f"matching.workers must be an integer >= 0 (0 = one per CPU core, at most 8), "
                              f"got {self.workers!r}")
        _one_of("matching.fusion", self.fusion, FUSIONS)
        if self.fusion_model is not None:
            expected = {"bias", *FUSED_FEATURES}
            keys = set(self.fusion_model)
            groups = [set(sequence_keys(kind)) for kind in SEQUENCE_KINDS]
            if not expected <= keys or any(0 < len(keys & g) < len(g) for g in groups) \
                    or keys - expected - set().union(*groups):
                raise ConfigError(f"matching.fusion_model needs exactly the keys {sorted(expected)}, optionally "
                                  f"with all of {' or all of '.join(str(sorted(g)) for g in groups)}, got {sorted(keys)}")
            if not all(math.isfinite(v) for v in self.fusion_model.values()):
                raise ConfigError(f"matching.fusion_model values must be finite, got {self.fusion_model}")
        elif self.fusion == "fused":
            raise ConfigError("matching.fusion fused needs matching.fusion_model (the presets ship one)")
        if len(self.patch_weights) != len(model.patch_sizes):
            raise ConfigError(
                f"matching.patch_weights {self.patch_weights} needs one weight per patch size "
                f"{model.patch_sizes}"
            )


@dataclass
class MapConfig:
    """Map database: faiss index, keyframe selection and what is stored per keyframe."""

    # None: a new map gets Flat / nprobe 16 / efSearch 128, an append and a query keep the map's own
    index: str | None = None  # Flat | IVF<n>,Flat | IVF<n>,PQ<m> | HNSW<M>
    nprobe: int | None = None  # IVF search parameter
    ef_search: int | None = None  # HNSW search parameter
    use_gpu: bool = False  # search on GPU when faiss-gpu is installed
    min_time_gap_s: float = 0.0  # keyframe selection: at least this much time between keyframes
    min_distance_m: float = 0.0  # ... and this much travel (when poses exist)
    min_descriptor_change: float = 0.0  # ... and 1 - cosine(global) to the last keyframe above this
    store_thumbnails: bool = True
    thumbnail_width: int = 160
    # per keyframe, for verifying a closure against it: the full-resolution image (JPEG q95) and the
    # registered depth (build-map --depth); the camera model is stored whenever it is known
    store_views: bool = True
    # opening a prebuilt map (detector, node, relocalization) first reads every byte against the
    # manifest's sha256 (slow on large maps; sizes and structure are always checked)
    verify_on_open: bool = False


@dataclass
class LocalizerConfig:
    """The query pipeline: global top-k, then patch re-ranking of the first ``rerank_k``."""

    top_k: int = 20
    rerank_k: int = 10
    rerank: bool = True
    max_image_pixels: int = 24_000_000  # larger inputs are rejected, not resized


@dataclass
class LoopClosureConfig:
    """The per-frame detector (:mod:`vlad_localization.detector`): which maps are searched, which
    candidate is a loop closure, and the bounds of this run's own keyframe store. Keyframes of the
    run are selected with the ``map`` section's thresholds, as ``build-map`` selects them."""

    mode: str = "localize"  # localize | loop_closure | both (see choices.MODES)
    score_threshold: float = 0.3  # minimum candidate score in [0, 1] for a loop closure
    min_time_gap_s: float = 30.0  # closures and this run's search skip keyframes closer in time
    min_travel_m: float = 0.0  # ... and (with poses) closer along the trajectory; 0 disables
    max_keyframes: int = 5000  # this run's store (~1 MB a keyframe at the speed preset, 640x480); then `eviction`
    eviction: str = "oldest"  # oldest | refuse
    # temporal consistency (loop_closure.LoopClosureRule): a closure needs this many consecutive frames whose
    # confident proposals agree (1 = each frame on its own); agreeing matches advance by at most the window
    consistency: int = 1
    consistency_window_s: float = 10.0
    consistency_window_m: float = 0.0  # > 0: with keyframe positions, agreeing matches lie within this many metres
    # sequence scoring (vlad_localization.sequence): candidates ranked by the mean similarity of the last
    # sequence_length frames along the candidate's run (best of sequence_speeds), 0 = off
    sequence_length: int = 0
    sequence_speeds: list[float] = field(default_factory=lambda: [0.5, 0.7, 1.0, 1.4, 2.0])
    # SeqSLAM's local contrast enhancement: similarities relative to this many keyframes either side along
    # the run (0 = raw similarities); also proposes the keyframes that stand out most for the current frame.
    # Measured: a large gain across seasons on a 300-place run, a loss on a 40-place one (docs/loop-closure.md)
    sequence_contrast_window: int = 0

    def validate(self) -> None:
        _one_of("loop_closure.mode", self.mode, MODES)
        _one_of("loop_closure.eviction", self.eviction, EVICTIONS)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"loop_closure.score_threshold must be in [0, 1], got {self.score_threshold!r}")
        _at_least("loop_closure", self, min_time_gap_s=0.0, min_travel_m=0.0, max_keyframes=1, consistency=1,
                  consistency_window_s=0.0, consistency_window_m=0.0, sequence_length=0,
                  sequence_contrast_window=0)
        if not self.sequence_speeds or not all(math.isfinite(v) and v > 0 for v in self.sequence_speeds):
            raise ConfigError(f"loop_closure.sequence_speeds must be a non-empty list of speeds > 0 (relative to "
                              f"the matched run), got {self.sequence_speeds!r}")

    @property
    def searches_map(self) -> bool:
        """The prebuilt map is searched (localize, both)."""
        return self.mode != "loop_closure"

    @property
    def searches_run(self) -> bool:
        """This run's own keyframes are stored and searched (loop_closure, both)."""
        return self.mode != "localize"


@dataclass
class VerificationConfig:
    """Geometric verification of a candidate with a relative pose (:mod:`vlad_localization.verification`)."""

    enabled: bool = False  # verify each accepted loop closure (node ~/loop_closure_edges, replay relative_pose)
    intrinsics: list[float] | None = None  # [fx, fy, cx, cy(, k1, k2, p1, p2)] of the camera image; None: unknown
    min_inliers: int = 20  # fewer inliers (or matches, or matches with depth): rejected
    ransac_threshold_px: float = 1.0  # essential matrix / homography RANSAC threshold (camera image pixels)
    pnp_threshold_px: float = 2.0  # PnP RANSAC reprojection threshold (pixels)
    pnp_iterations: int = 1000
    min_pnp_inlier_ratio: float = 0.4  # fewer PnP inliers / matches with depth: "inconsistent_depth"
    ransac_confidence: float = 0.999
    ransac_seed: int | None = 0  # seeds OpenCV's RNG before each RANSAC for repeatable poses
    homography_threshold_px: float = 3.0  # the plane model's tolerance (planar-scene test)
    min_parallax_px: float = 12.0  # an essential inlier this far from the plane model has parallax
    min_parallax_fraction: float = 0.05  # fewer essential inliers with parallax: "planar"
    refine: str = "sift"  # sift | none (see choices.REFINEMENTS)
    refine_window: float = 1.0  # guided-matching box = this x the patch's extent in the image
    depth_scale: float = 0.001  # integer depth images (16UC1) in these metres per unit
    max_depth_m: float = 20.0  # farther depths (and stereo points) are ignored
    # added to the keypoint-noise covariance, which ignores calibration and model errors (standard
    # deviations; translation in metres, or unit-vector units for a monocular direction: 0.1 ~ 6 deg)
    covariance_floor_rotation_deg: float = 1.0
    covariance_floor_translation: float = 0.1
    # the robot's pose in the map (verification.map_pose): each camera's optical frame in the robot's
    # base frame, [x, y, z, qx, qy, qz, qw] per camera index, flattened; empty: identity for every camera
    camera_to_base: list[float] = field(default_factory=list)
    # a monocular edge has no scale: its map pose puts the query camera at the keyframe camera, with
    # this bound on their distance (m) as the position's standard deviation on each axis
    monocular_baseline_m: float = 2.0

    def validate(self) -> None:
        _one_of("verification.refine", self.refine, REFINEMENTS)
        problem = extrinsics_problem(self.camera_to_base)
        if problem:
            raise ConfigError(f"verification.camera_to_base {problem}")
        if self.intrinsics is not None:
            if len(self.intrinsics) not in (4, 8):
                raise ConfigError("verification.intrinsics must be [fx, fy, cx, cy] or [fx, fy, cx, cy, k1, k2, "
                                  f"p1, p2], got {self.intrinsics!r}")
            if not (self.intrinsics[0] > 0 and self.intrinsics[1] > 0):
                raise ConfigError(f"verification.intrinsics: fx and fy must be positive, got {self.intrinsics!r}")
        if not 0.0 < self.ransac_confidence < 1.0:
            raise ConfigError(f"verification.ransac_confidence must be in (0, 1), got {self.ransac_confidence!r}")
        for name in ("ransac_threshold_px", "pnp_threshold_px", "homography_threshold_px", "min_parallax_px",
                     "refine_window", "depth_scale", "max_depth_m", "monocular_baseline_m"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"verification.{name} must be > 0, got {getattr(self, name)!r}")
        _at_least("verification", self, min_inliers=5, pnp_iterations=1, min_parallax_fraction=0.0,
                  min_pnp_inlier_ratio=0.0, covariance_floor_rotation_deg=0.0, covariance_floor_translation=0.0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    map: MapConfig = field(default_factory=MapConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    loop_closure: LoopClosureConfig = field(default_factory=LoopClosureConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        self.model.validate()
        self.matching.validate(self.model)
        _at_least("map", self.map, nprobe=1, ef_search=1, thumbnail_width=16, min_time_gap_s=0.0,
                  min_distance_m=0.0, min_descriptor_change=0.0)
        _at_least("localizer", self.localizer, top_k=1, rerank_k=0, max_image_pixels=1)
        self.loop_closure.validate()
        self.verification.validate()
        return self


def extrinsics_problem(values) -> str | None:
    """Why ``verification.camera_to_base`` is not a list of extrinsics (None when it is)."""
    values = list(values or ())
    if len(values) % 7:
        return f"needs 7 numbers [x, y, z, qx, qy, qz, qw] per camera, got {len(values)}"
    if not all(math.isfinite(v) for v in values):
        return "has a NaN or infinite value"
    for i in range(0, len(values), 7):
        norm = math.sqrt(sum(v * v for v in values[i + 3:i + 7]))
        if abs(norm - 1.0) > 1e-2:
            return f"camera {i // 7}: the quaternion (qx, qy, qz, qw) has norm {norm:.4f}, not 1"
    return None


def _one_of(key: str, value: Any, table: Mapping[str, str]) -> None:
    if value not in table:
        raise ConfigError(f"{key} {value!r}: use {names(table)}")


def _at_least(section: str, values, **minima) -> None:
    """Range checks: each named field (when not None) must be >= its minimum."""
    for name, low in minima.items():
        value = getattr(values, name)
        if value is not None and value < low:
            raise ConfigError(f"{section}.{name} must be >= {low}, got {value!r}")


def _type_error(value: Any, hint: Any) -> str | None:
    """What is wrong with ``value`` for the annotation ``hint`` (None when it fits). Ints fit floats;
    bools fit only bools."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        return None if any(_type_error(value, h) is None for h in options) else \
            " or ".join(_type_name(h) for h in options)
    if origin is list:
        (item,) = typing.get_args(hint)
        bad = not isinstance(value, list) or any(_type_error(v, item) for v in value)
        return _type_name(hint) if bad else None
    if origin is dict:
        key, item = typing.get_args(hint)
        bad = not isinstance(value, dict) or any(_type_error(k, key) or _type_error(v, item) for k, v in value.items())
        return _type_name(hint) if bad else None
    if hint is type(None):
        return None if value is None else "null"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return None if ok else _type_name(hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _type_name(item))
    if typing.get_origin(hint) is dict:
        return f"a mapping of {_type_name(typing.get_args(hint)[0])} to {_type_name(typing.get_args(hint)[1])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))

_SECTION_TYPES = {
    "model": ModelConfig,
    "matching": MatchingConfig,
    "map": MapConfig,
    "localizer": LocalizerConfig,
    "loop_closure": LoopClosureConfig,
    "verification": VerificationConfig,
}


def _build_section(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        expected = _type_error(value, hints[key])
        if expected:
            raise ConfigError(f"{where}: {key} must be {expected}, got {value!r}")
    return cls(**dict(values))


def config_from_dict(data: Mapping[str, Any], where: str = "config", base: Config | None = None) -> Config:
    """Build a validated :class:`Config` from a mapping, on top of ``base`` (defaults if None)."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    data = dict(data or {})
    data.pop("base", None)
    name = data.pop("name", None)
    unknown = sorted(set(data) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; known: {sorted(_SECTION_TYPES)}")
    for section, cls in _SECTION_TYPES.items():
        current = dataclasses.asdict(getattr(cfg, section))
        values = data.get(section) or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: section {section!r} must be a mapping")
        current.update(values)
        setattr(cfg, section, _build_section(cls, current, f"{where}: {section}"))
    if name:
        cfg.name = str(name)
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def apply_overrides(cfg: Config, overrides: Mapping[str, Any], where: str = "overrides") -> Config:
    """``cfg`` with ``{"section.key": value}`` overrides applied (None values are skipped), checked
    like a file's values. The one way adapters (CLI flags, node parameters) change a configuration."""
    data: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    out = config_from_dict(data, where=where, base=cfg)
    out.name = cfg.name
    return out


def preset_path(name: str) -> Path:
    """Path of a shipped preset YAML (``performance``, ``speed`` or ``storage``)."""
    try:
        path = Path(str(resources.files("vlad_localization.presets").joinpath(f"{name}.yaml")))
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parents[1] / "config" / f"{name}.yaml"
    if not path.is_file():  # running from a source checkout
        path = Path(__file__).resolve().parents[1] / "config" / f"{name}.yaml"
    return path


def load_config(name_or_path: str | Path | None = None) -> Config:
    """Load a preset by name or a YAML file (which may say ``base: <preset>``)."""
    if name_or_path is None:
        return Config().validate()
    text = str(name_or_path)
    if text in PRESETS:
        path = preset_path(text)
    else:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(
                f"config {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file"
            )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = None
    if data.get("base"):
        if data["base"] not in PRESETS:
            raise ConfigError(f"{path}: base {data['base']!r} is not a preset ({', '.join(PRESETS)})")
        base = load_config(data["base"])
    cfg = config_from_dict(data, where=str(path), base=base)
    if cfg.name == "custom" and text in PRESETS:
        cfg.name = text
    return cfg
