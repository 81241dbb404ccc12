"""The node's parameters: one table (name, default, description) used to declare them, to check
``config/vlad_localization.yaml`` and to document them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlad_localization.choices import MATCHERS, names
from vlad_localization.loop_closure import DEFAULT_MIN_TIME_GAP_S, DEFAULT_SCORE_THRESHOLD


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    on_configure: bool = False  # read on configure; else read for every frame
    choices: tuple[str, ...] = ()  # for text parameters: the values allowed ('' always allowed when the default)

    @property
    def dynamic(self) -> bool:
        """Declared with dynamic typing: a number may be written 5 or 5.0, ``compressed`` true or 'true'."""
        return isinstance(self.default, float) or self.name == "compressed"

    def check(self, value) -> str | None:
        """Why ``value`` is not acceptable for this parameter (None when it is)."""
        if isinstance(self.default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{self.name} must be a number, got {value!r}"
        if isinstance(self.default, float) and value < 0:
            return f"{self.name} must be >= 0, got {value!r}"
        if self.choices and str(value).lower() not in self.choices and not (value == "" and self.default == ""):
            return f"{self.name} must be one of {' | '.join(self.choices)}, got {value!r}"
        return None

    def coerce(self, value):
        """The value as the node uses it: floats as float, ``compressed`` as 'auto' | 'true' | 'false'."""
        if isinstance(self.default, float):
            return float(value)
        if self.name == "compressed":
            return str(value).lower()
        return value


PARAMETERS: tuple[Param, ...] = (
    Param("map_path", "", "Map directory built by `vlad-localization build-map` (required).", True),
    Param("checkpoint", "", "Patch-NetVLAD checkpoint (.pth.tar) the map was built with (required).", True),
    Param("preset", "speed", "Configuration: performance | speed | storage, or a YAML file path.", True),
    Param("device", "auto", "Torch device: auto | cpu | cuda | cuda:N | mps.", True),
    Param("half", False, "fp16 inference (CUDA only).", True),
    Param("image_topics", ["/camera/image_raw"],
          "Camera topics; the index in this list is the `camera` column of ~/candidates.", True),
    Param("compressed", "auto",
          "auto | true | false. auto: sensor_msgs/CompressedImage when the topic is advertised "
          "with that type or its name ends in /compressed, else sensor_msgs/Image.", True,
          choices=("auto", "true", "false")),
    Param("qos_reliability", "best_effort", "Image subscription reliability: best_effort | reliable "
          "(sensor-data QoS, depth 1).", True, choices=("best_effort", "reliable")),
    Param("max_rate_hz", 0.0, "Per-camera processing rate cap in Hz (0 = as fast as the model runs)."),
    Param("top_k", 0, "Global (NetVLAD) candidates retrieved from the map (0 = the preset's value).", True),
    Param("rerank_k", 0, "Candidates re-ranked by patch matching (0 = the preset's value).", True),
    Param("matcher", "", f"Patch matcher: {names(MATCHERS)} ('' = the preset's value).", True,
          choices=tuple(MATCHERS)),
    Param("score_threshold", DEFAULT_SCORE_THRESHOLD,
          "Minimum absolute patch score in [0, 1] for a candidate to be a ~/loop_closure."),
    Param("min_time_gap_s", DEFAULT_MIN_TIME_GAP_S,
          "Minimum |t_query - t_match| in s for a ~/loop_closure (excludes the robot's recent frames)."),
    Param("map_frame", "map", "frame_id of ~/candidate_poses."),
    Param("publish_match_image", True, "Publish ~/match_image (computed only while subscribed)."),
    Param("autostart", True, "Configure and activate on start-up (no lifecycle manager needed).", True),
    Param("verify_map", False, "Check every byte of the map against its manifest's sha256 at configure and "
          "on ~/reload_map (reads the whole map; sizes and structure are always checked).", True),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
BY_NAME = {p.name: p for p in PARAMETERS}


def markdown_table() -> str:
    """The parameters as a Markdown table (for the README)."""
    rows = ["| parameter | default | read | description |", "|---|---|---|---|"]
    rows += [
        f"| `{p.name}` | `{p.default!r}` | {'configure' if p.on_configure else 'every frame'} "
        f"| {p.description.replace('|', chr(92) + '|')} |"
        for p in PARAMETERS
    ]
    return "\n".join(rows)
