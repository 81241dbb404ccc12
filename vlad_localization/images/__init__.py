"""Image input: files, folders and ROS 2 bags as :class:`Frame` streams, and ROS message conversion.

No rclpy here: the converters work on any object with the ROS message fields.
"""
from .bag import BagError, BagImageSource, iter_bag, list_image_topics, write_bag
from .convert import (
    DEFAULT_MAX_PIXELS,
    REASONS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    peek_compressed_size,
    rgb_to_compressed,
    rgb_to_image_fields,
)
from .folder import iter_folder, read_poses_csv
from .frames import Frame, Pose, PoseTrack, interpolate_pose, slerp
from .io import list_images, load_rgb, to_rgb8

__all__ = [
    "BagError",
    "BagImageSource",
    "DEFAULT_MAX_PIXELS",
    "Frame",
    "ImageConversionError",
    "Pose",
    "PoseTrack",
    "REASONS",
    "SUPPORTED_ENCODINGS",
    "compressed_msg_to_rgb",
    "image_msg_to_rgb",
    "interpolate_pose",
    "iter_bag",
    "iter_folder",
    "list_image_topics",
    "list_images",
    "load_rgb",
    "peek_compressed_size",
    "read_poses_csv",
    "rgb_to_compressed",
    "rgb_to_image_fields",
    "slerp",
    "to_rgb8",
    "write_bag",
]
