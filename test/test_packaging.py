"""The package installs the ROS way (colcon, ament_python) and the pip way, and its core stays ROS-free."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "README.md", "resource", "vlad_localization", "launch", "config")


def _colcon() -> str:
    exe = shutil.which("colcon") or str(Path(sys.executable).with_name("colcon"))
    if not Path(exe).exists():
        pytest.skip("colcon not installed (pip install colcon-common-extensions, part of the test extra)")
    return exe


def test_colcon_build_installs_executables_and_share_files(tmp_path):
    src = tmp_path / "ws" / "src" / "vlad_localization"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [_colcon(), "build", "--event-handlers", "console_direct-"],
        cwd=tmp_path / "ws", env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    install = tmp_path / "ws" / "install" / "vlad_localization"
    lib = install / "lib" / "vlad_localization"
    share = install / "share" / "vlad_localization"
    assert (lib / "vlad_localization_node").is_file()
    assert (lib / "vlad-localization").is_file()
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "vlad_localization.launch.py").is_file()
    for preset in ("performance", "speed", "storage", "vlad_localization"):
        assert (share / "config" / f"{preset}.yaml").is_file(), preset
    assert (tmp_path / "ws" / "install" / "share" / "ament_index" / "resource_index" / "packages" / "vlad_localization").exists() or (
        install / "share" / "ament_index" / "resource_index" / "packages" / "vlad_localization"
    ).is_file()
    # The installed package (not the source tree) finds its presets.
    site = next(install.glob("lib/python3*/site-packages"))
    check = subprocess.run(
        [sys.executable, "-c", "import vlad_localization.config as c; cfg = c.load_config('speed'); "
         "from vlad_localization.model.known_checkpoints import load_table; assert 'pittsburgh_WPCA512' in load_table(); "
         "print(c.__file__, cfg.name)"],
        cwd=tmp_path, env=dict(env, PYTHONPATH=str(site)), capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert str(site) in check.stdout and check.stdout.split()[-1] == "speed"


def test_core_library_never_imports_rclpy():
    code = (
        "import sys\n"
        "import vlad_localization.config, vlad_localization.model.encoder, vlad_localization.matching.matcher\n"
        "import vlad_localization.mapdb, vlad_localization.pipeline, vlad_localization.images.convert\n"
        "import vlad_localization.verification\n"
        "import vlad_localization.cli.main as m; m.build_parser()\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('rclpy', 'torchvision'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "command", ["download-weights", "init-model", "encode", "match", "build-map", "map-info", "merge-maps", "query", "replay"]
)
def test_every_subcommand_has_a_teaching_help(command):
    proc = subprocess.run(
        [sys.executable, "-m", "vlad_localization.cli", command, "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"usage: vlad-localization {command}" in text
    assert "not implemented" not in text.lower()
    assert len(text.splitlines()) >= 8, text  # options explained, not just a usage line


def test_top_level_help_lists_the_workflow():
    proc = subprocess.run([sys.executable, "-m", "vlad_localization.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for word in ("init-model", "build-map", "query", "vlad_localization_node"):
        assert word in proc.stdout
