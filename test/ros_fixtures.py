"""Real-data fixtures for the ROS tests: a map of campus_loop_72 (72 keyframes with poses, stamped
``i`` seconds; ``image_71`` revisits ``image_0``), built once per session and shared by modules, and
the same model and preset without a map (mode loop_closure)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlad_localization.images.io import load_rgb
from vlad_localization.ros.client import NodeClient, start_node, stop_node

_CACHE: dict[str, "CampusMap"] = {}


@dataclass
class NodeSetup:
    """The session's speed checkpoint and a node preset YAML matching it (240x320 input, CPU)."""

    checkpoint: Path
    config: Path

    def node_params(self, image_topics, **extra) -> dict:
        """Node parameters on the CPU (reliable QoS so tests lose no frame)."""
        return {"checkpoint": self.checkpoint, "preset": self.config, "device": "cpu",
                "image_topics": list(image_topics), "qos_reliability": "reliable", **extra}


@dataclass
class CampusMap(NodeSetup):
    map_dir: Path = Path()
    images: Path = Path()

    def node_params(self, image_topics, **extra) -> dict:
        """Node parameters for this map (see :meth:`NodeSetup.node_params`)."""
        return super().node_params(image_topics, **{"map_path": self.map_dir, **extra})

    def image(self, i: int):
        return load_rgb(self.images / f"image_{i}.png")

    def distance_m(self, i: int, j: int) -> float:
        """Ground-truth distance between keyframes ``i`` and ``j`` (data.csv)."""
        import numpy as np

        xy = np.loadtxt(self.images / "data.csv", delimiter=",", usecols=(1, 2))
        return float(np.hypot(*(xy[i] - xy[j])))

    def is_true_loop_closure(self, t_query: float, t_match: float) -> bool:
        """Keyframe ``t`` is stamped ``t`` s: a revisit >= 20 frames apart within 10 m (the only
        such place in this loop is image_71 at image_0 (5.5 m) / image_1 (8.6 m))."""
        i, j = round(t_query), round(t_match)
        return abs(i - j) >= 20 and self.distance_m(i, j) <= 10.0


def _node_setup(tmp_path_factory, speed_checkpoint) -> NodeSetup:
    if "setup" not in _CACHE:
        import yaml
        from conftest import SPEED_IMAGE_SIZE

        config = tmp_path_factory.mktemp("node") / "speed_small.yaml"  # the speed preset at 240x320, on CPU
        height, width = SPEED_IMAGE_SIZE
        config.write_text(yaml.safe_dump({"base": "speed", "name": "speed-240x320",
                                          "model": {"image_height": height, "image_width": width, "device": "cpu"}}))
        _CACHE["setup"] = NodeSetup(Path(speed_checkpoint), config)
    return _CACHE["setup"]


@pytest.fixture(scope="session")
def node_setup(tmp_path_factory, speed_checkpoint) -> NodeSetup:
    """The session's ``speed_checkpoint`` and a node preset YAML matching it (no map)."""
    return _node_setup(tmp_path_factory, speed_checkpoint)


@pytest.fixture(scope="session")
def campus_map(tmp_path_factory, datasets_dir, speed_checkpoint) -> CampusMap:
    """The map with the session's ``speed_checkpoint`` and node preset."""
    if "campus" not in _CACHE:
        from vlad_localization.cli.main import main as cli

        node_setup = _node_setup(tmp_path_factory, speed_checkpoint)

        work = tmp_path_factory.mktemp("campus")
        images = datasets_dir / "campus_loop_72"
        rc = cli(["build-map", "--checkpoint", str(node_setup.checkpoint), "--config", str(node_setup.config),
                  "--images", str(images), "--poses", str(images / "data.csv"), "--out", str(work / "map"), "--no-progress"])
        assert rc == 0, "build-map of campus_loop_72 failed"
        _CACHE["campus"] = CampusMap(node_setup.checkpoint, node_setup.config, work / "map", images)
    return _CACHE["campus"]


def module_domain_id(module_index: int) -> str:
    """A ROS_DOMAIN_ID for a module-scoped node: 215..232 (valid on Linux), outside the 1..200
    that conftest's per-test ``ros_domain_id`` hands out, distinct per module and run."""
    import os

    return str(215 + (os.getpid() + module_index) % 18)


@contextmanager
def running_node(campus: NodeSetup, log: Path, name: str, image_topics, domain_index: int, odom_topic=None,
                 **params):
    """The real node with ``campus``'s model (and map, if it has one) in its own process (on its
    module's ROS_DOMAIN_ID), and a connected :class:`NodeClient` (publishing odometry on
    ``odom_topic`` when given); the node is stopped on exit."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ROS_DOMAIN_ID", module_domain_id(domain_index))
    if odom_topic:
        params["odom_topic"] = odom_topic
    proc = start_node(campus.node_params(image_topics, **params), name=name, log_path=log)
    try:
        with NodeClient(node_name=name, image_topics=tuple(image_topics), odom_topic=odom_topic) as client:
            assert client.wait_connected(90), f"node did not start:\n{log.read_text()[-3000:]}"
            yield client
    finally:
        stop_node(proc)
        mp.undo()
