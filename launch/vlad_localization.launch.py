"""Bring up vlad_localization_node (a lifecycle node that configures and activates itself).

    ros2 launch vlad_localization vlad_localization.launch.py mode:=loop_closure \
        checkpoint:=model.pth.tar image_topic:=/camera/image_raw [odom_topic:=/odom] [map:=maps/run1] \
        [preset:=speed] [use_sim_time:=true] [namespace:=robot1] [params_file:=my_params.yaml]

Launch arguments override ``params_file``; ``mode``, ``map``, ``odom_topic``, ``preset`` and
``image_topic`` only when given, so several cameras are listed as ``image_topics`` in a params file. With a lifecycle manager instead, pass
``autostart: false`` in a params file.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

PACKAGE = "vlad_localization"


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "vlad_localization.yaml")
    args = [
        DeclareLaunchArgument("mode", default_value="",
                              description="localize | loop_closure | both (default: params_file's / the preset's)"),
        DeclareLaunchArgument("map", default_value="",
                              description="map directory from `vlad-localization build-map` (modes localize, both)"),
        DeclareLaunchArgument("odom_topic", default_value="",
                              description="nav_msgs/Odometry topic for keyframe poses and min_travel_m"),
        DeclareLaunchArgument("checkpoint", description="checkpoint the map was built with: a .pth.tar file or "
                                                        "a downloaded name such as pittsburgh_WPCA512"),
        DeclareLaunchArgument("preset", default_value="",
                              description="performance | speed | storage | path to a config YAML "
                                          "(default: params_file's, speed in the shipped one)"),
        DeclareLaunchArgument("image_topic", default_value="",
                              description="one camera topic (Image, or CompressedImage if it ends in /compressed); "
                                          "default: params_file's image_topics (/camera/image_raw in the shipped one)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (e.g. `ros2 bag play --clock`)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="node parameters YAML (config/vlad_localization.yaml)"),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=node_actions)])


def node_actions(context):
    """The node, its parameters: ``params_file``, then the launch arguments that were given (an
    argument left empty does not override the file, e.g. its several cameras)."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {
        "checkpoint": value("checkpoint"),
        "use_sim_time": value("use_sim_time").strip().lower() in ("true", "1", "yes"),
    }
    for arg, param in (("map", "map_path"), ("mode", "mode"), ("odom_topic", "odom_topic"), ("preset", "preset")):
        if value(arg):
            overrides[param] = value(arg)
    if value("image_topic"):
        overrides["image_topics"] = [value("image_topic")]
    return [LifecycleNode(
        package=PACKAGE,
        executable="vlad_localization_node",
        name="vlad_localization",
        namespace=value("namespace"),
        output="screen",
        parameters=[value("params_file"), overrides],
    )]
