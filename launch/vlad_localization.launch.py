"""Bring up vlad_localization_node (a lifecycle node that configures and activates itself).

    ros2 launch vlad_localization vlad_localization.launch.py map:=maps/run1 \
        checkpoint:=model.pth.tar image_topic:=/camera/image_raw [preset:=speed] \
        [use_sim_time:=true] [namespace:=robot1] [params_file:=my_params.yaml]

With a lifecycle manager instead, pass autostart:=false in a params file.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "vlad_localization"


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "vlad_localization.yaml")
    args = [
        DeclareLaunchArgument("map", description="map directory from `vlad-localization build-map`"),
        DeclareLaunchArgument("checkpoint", description="checkpoint the map was built with"),
        DeclareLaunchArgument("preset", default_value="speed",
                              description="performance | speed | storage | path to a config YAML"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="camera topic (Image, or CompressedImage if it ends in /compressed)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (e.g. `ros2 bag play --clock`)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="node parameters YAML (config/vlad_localization.yaml)"),
    ]
    cfg = LaunchConfiguration
    node = LifecycleNode(
        package=PACKAGE,
        executable="vlad_localization_node",
        name="vlad_localization",
        namespace=cfg("namespace"),
        output="screen",
        parameters=[
            cfg("params_file"),
            {
                "map_path": cfg("map"),
                "checkpoint": cfg("checkpoint"),
                "preset": cfg("preset"),
                "image_topics": [[cfg("image_topic")]],  # inner list: a list of strings, not one string
                "use_sim_time": ParameterValue(cfg("use_sim_time"), value_type=bool),
            },
        ],
    )
    return LaunchDescription(args + [node])
