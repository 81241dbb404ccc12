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
        "LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "LifecycleNode", "Node",
        "ParameterValue")}
    return {
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=lambda pkg: str(share)),
        "launch": module("launch", LaunchDescription=classes["LaunchDescription"]),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=classes["DeclareLaunchArgument"]),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=classes["LaunchConfiguration"]),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", LifecycleNode=classes["LifecycleNode"],
                                     Node=classes["Node"]),
        "launch_ros.parameter_descriptions": module("launch_ros.parameter_descriptions",
                                                    ParameterValue=classes["ParameterValue"]),
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
    assert set(declared) == {"map", "checkpoint", "preset", "image_topic", "use_sim_time", "namespace", "params_file"}
    assert Path(declared["params_file"]) == REPO / "config" / "vlad_localization.yaml"  # share dir = repo here
    (node,) = [a for a in actions if type(a).__name__ == "LifecycleNode"]
    assert node.kwargs["package"] == "vlad_localization"
    assert node.kwargs["executable"] == "vlad_localization_node"
    assert node.kwargs["name"] == "vlad_localization"
    params_file, overrides = node.kwargs["parameters"]
    assert params_file.args == ("params_file",)
    assert overrides["map_path"].args == ("map",) and overrides["checkpoint"].args == ("checkpoint",)
    topics = overrides["image_topics"]
    assert isinstance(topics, list) and isinstance(topics[0], list)  # launch_ros: list of strings
    assert topics[0][0].args == ("image_topic",)
    assert overrides["use_sim_time"].kwargs["value_type"] is bool
    node_params = yaml.safe_load((REPO / "config" / "vlad_localization.yaml").read_text())["/**"]["ros__parameters"]
    assert {"map_path", "checkpoint", "preset", "image_topics"} <= set(node_params)
