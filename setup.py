"""ament_python / pip package definition for vlad_localization.

Installs with colcon in a ROS 2 workspace (scripts under lib/vlad_localization, launch and config
under share/vlad_localization) and with plain pip without ROS (``pip install .[ros]`` pulls the
ROS 2 Kilted wheels from PyPI for machines without a ROS install).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vlad_localization"

CORE_REQUIRES = [
    "torch>=2.1",
    "numpy>=1.24",
    "faiss-cpu>=1.7.4",
    "opencv-python-headless>=4.8",
    "Pillow>=9",
    "PyYAML>=6",
    "tqdm>=4.60",
    "matplotlib>=3.5",  # evaluate --plot / --examples (Agg backend, no display needed)
    "rosbags>=0.10",
]

ROS_WHEELS = [
    "ros-kilted-rclpy",
    "ros-kilted-rmw-fastrtps-cpp",
    "ros-kilted-sensor-msgs",
    "ros-kilted-std-msgs",
    "ros-kilted-geometry-msgs",
    "ros-kilted-diagnostic-msgs",
    "ros-kilted-std-srvs",
    "ros-kilted-nav-msgs",
    "ros-kilted-visualization-msgs",
    "ros-kilted-lifecycle-msgs",
]

TEST_REQUIRES = [
    "pytest>=7",
    "pytest-timeout>=2",
    "hypothesis>=6",
    "psutil>=5",
    "scikit-learn>=1.2",  # imported by the reference patchnetvlad module (installed --no-deps)
    "colcon-common-extensions",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Patch-NetVLAD visual loop closure and relocalization for ROS 2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*", "benchmarks"]) + [f"{PACKAGE}.presets"],
    # The preset YAMLs live in config/ (installed to share/ for ROS) and ship inside the
    # Python package too, so pip-only installs find them.
    package_dir={f"{PACKAGE}.presets": "config"},
    # The table of known checkpoints (download-weights) is data beside its module.
    package_data={f"{PACKAGE}.presets": ["*.yaml"], f"{PACKAGE}.model": ["*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=CORE_REQUIRES,
    extras_require={"ros": ROS_WHEELS, "test": TEST_REQUIRES},
    zip_safe=True,
    entry_points={
        "console_scripts": [
            f"vlad-localization = {PACKAGE}.cli.main:main",
            f"vlad_localization_node = {PACKAGE}.ros.node:main",
        ],
    },
)
