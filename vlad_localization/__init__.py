"""vlad_localization: Patch-NetVLAD visual loop closure and relocalization.

The core library (``model``, ``matching``, ``mapdb``, ``images``, ``pipeline``) never imports
rclpy; ``vlad_localization.ros`` and ``vlad_localization.cli`` are thin adapters on top of it.
"""
__version__ = "0.1.0"
