"""Fixtures of the ROS tests (registered by conftest's ``pytest_plugins``): a map of campus_loop_72
(72 keyframes with poses, stamped ``i`` seconds; ``image_71`` revisits ``image_0``), built once per
session and shared by modules, the same model and preset without a map (mode loop_closure), the one
ROS_DOMAIN_ID allocator and the real node in its own process on a domain of its own."""
from __future__ import annotations

import itertools
import os
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


# -- ROS_DOMAIN_ID: the one allocator of the suite ---------------------------------------------------
MAX_DOMAIN_ID = 232  # the largest valid ROS_DOMAIN_ID on Linux (0 is everyone's default: never handed out)
_DOMAIN_BASE = int(os.environ.get("VLAD_TEST_DOMAIN_BASE", 1 + os.getpid() % MAX_DOMAIN_ID))
_DOMAINS_HANDED_OUT = itertools.count()


def next_domain_id() -> int:
    """A ROS_DOMAIN_ID no node of this test process had before: ``VLAD_TEST_DOMAIN_BASE`` (default:
    from the process id), then the next ones, within 1..232. Parallel runs given bases far apart do
    not cross-talk."""
    return 1 + (_DOMAIN_BASE - 1 + next(_DOMAINS_HANDED_OUT)) % MAX_DOMAIN_ID


@contextmanager
def own_domain():
    """ROS_DOMAIN_ID set to :func:`next_domain_id` inside the block (for the nodes it starts and the
    rclpy contexts it creates), the previous value back after it."""
    mp = pytest.MonkeyPatch()
    domain = next_domain_id()
    mp.setenv("ROS_DOMAIN_ID", str(domain))
    try:
        yield domain
    finally:
        mp.undo()


@pytest.fixture
def ros_domain_id() -> int:
    """A ROS_DOMAIN_ID of this test's own (:func:`own_domain`)."""
    with own_domain() as domain:
        yield domain


@pytest.fixture
def rclpy_context(ros_domain_id):
    """rclpy initialised (default context) on the test's own domain, shut down after it."""
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


@contextmanager
def running_node(campus: NodeSetup, log: Path, name: str, image_topics, odom_topic=None, **params):
    """The real node with ``campus``'s model (and map, if it has one) in its own process, on a
    ROS_DOMAIN_ID of its own (:func:`own_domain`), and a connected :class:`NodeClient` (publishing
    odometry on ``odom_topic`` when given); the node is stopped on exit."""
    if odom_topic:
        params["odom_topic"] = odom_topic
    with own_domain():
        proc = start_node(campus.node_params(image_topics, **params), name=name, log_path=log)
        try:
            with NodeClient(node_name=name, image_topics=tuple(image_topics), odom_topic=odom_topic) as client:
                assert client.wait_connected(90), f"node did not start:\n{log.read_text()[-3000:]}"
                yield client
        finally:
            stop_node(proc)
