"""The launch file, without the ``launch`` package (not installable here).

What is real: it compiles, and it names the executable and package files that exist. What is a
STUB: ``test_generate_launch_description_with_stub_modules`` injects tiny fake ``launch`` /
``launch_ros`` / ``ament_index_python`` modules that only record the constructed actions; it checks
our wiring (arguments, parameters), not launch's behaviour.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "vlad_localization.launch.py"


def test_launch_file_compiles_and_names_existing_things():
    tree = ast.parse(LAUNCH.read_text(), str(LAUNCH))
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert "vlad_localization_node" in strings
    setup = (REPO / "setup.py").read_text()
    assert "vlad_localization_node = {PACKAGE}.ros.node:main" in setup
    assert (REPO / "config" / "vlad_localization.yaml").is_file()
    assert "vlad_localization.yaml" in strings


class _Recorder:
    """Stands in for any launch class: records its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stub_modules(share: Path) -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    classes = {n: type(n, (_Recorder,), {}) for n in (
        "LaunchDescription", "DeclareLaunchArgument", "LifecycleNode", "Node", "OpaqueFunction")}
    # a launch argument's value: the context is a dict of argument values here
    classes["LaunchConfiguration"] = type("LaunchConfiguration", (_Recorder,),
                                          {"perform": lambda self, context: context[self.args[0]]})
    return {
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=lambda pkg: str(share)),
        "launch": module("launch", LaunchDescription=classes["LaunchDescription"]),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=classes["DeclareLaunchArgument"],
                                 OpaqueFunction=classes["OpaqueFunction"]),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=classes["LaunchConfiguration"]),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", LifecycleNode=classes["LifecycleNode"],
                                     Node=classes["Node"]),
    }


def test_generate_launch_description_with_stub_modules(monkeypatch):
    """STUB TEST: fake launch modules record what generate_launch_description builds."""
    for name, mod in _stub_modules(REPO).items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("vlad_launch_under_test", LAUNCH)
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    ld = launch_file.generate_launch_description()
    actions = ld.args[0]
    declared = {a.args[0]: a.kwargs.get("default_value") for a in actions if type(a).__name__ == "DeclareLaunchArgument"}
    assert set(declared) == {"mode", "map", "odom_topic", "checkpoint", "preset", "image_topic", "use_sim_time",
                             "namespace", "params_file"}
    assert Path(declared["params_file"]) == REPO / "config" / "vlad_localization.yaml"  # share dir = repo here
    (opaque,) = [a for a in actions if type(a).__name__ == "OpaqueFunction"]
    given = {"map": "maps/run1", "checkpoint": "m.pth.tar", "preset": "performance", "image_topic": "/cam/image_raw",
             "use_sim_time": "true", "namespace": "robot1", "params_file": "my.yaml", "mode": "both",
             "odom_topic": "/odom"}
    (node,) = opaque.kwargs["function"](given)
    assert node.kwargs["package"] == "vlad_localization"
    assert node.kwargs["executable"] == "vlad_localization_node"
    assert node.kwargs["name"] == "vlad_localization" and node.kwargs["namespace"] == "robot1"
    params_file, overrides = node.kwargs["parameters"]  # later entries win in launch_ros
    assert params_file == "my.yaml"
    assert overrides == {"map_path": "maps/run1", "checkpoint": "m.pth.tar", "use_sim_time": True, "mode": "both",
                         "odom_topic": "/odom", "preset": "performance", "image_topics": ["/cam/image_raw"]}
    # arguments not given: the params file's values (e.g. several cameras) are not overridden
    (node,) = opaque.kwargs["function"](given | {"preset": "", "image_topic": "", "use_sim_time": "false",
                                                 "map": "", "mode": "", "odom_topic": ""})
    assert node.kwargs["parameters"][1] == {"checkpoint": "m.pth.tar", "use_sim_time": False}
    node_params = yaml.safe_load((REPO / "config" / "vlad_localization.yaml").read_text())["/**"]["ros__parameters"]
    assert {"map_path", "checkpoint", "preset", "image_topics"} <= set(node_params)
