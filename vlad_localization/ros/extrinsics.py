"""``camera_to_base`` from TF (the node's ``camera_to_base_from_tf``). Optional: ``tf2_ros`` comes
with a ROS 2 install and is not on PyPI, so it is imported only when the option is on."""
from __future__ import annotations


def tf2_missing() -> str | None:
    """Why TF cannot be read here (None when ``tf2_ros`` is importable)."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError as exc:
        return (f"camera_to_base_from_tf needs tf2_ros, which comes with a ROS 2 install (not PyPI): {exc}; "
                "give the extrinsics in camera_to_base instead")
    return None


class TfExtrinsics:
    """Each camera's optical frame (its images' ``header.frame_id``) in ``base_frame``, looked up
    once per camera (a static extrinsic) from the node's TF listener."""

    def __init__(self, node, base_frame: str, cameras: int):
        import tf2_ros

        self.base_frame, self.cameras = base_frame, cameras
        self._errors = (tf2_ros.TransformException,)
        self.buffer = tf2_ros.Buffer()
        self.listener = tf2_ros.TransformListener(self.buffer, node)
        self.values: dict[int, list[float]] = {}

    def lookup(self, camera: int, frame_id: str) -> str | None:
        """Look camera ``camera``'s extrinsic up (once); why it is not known yet, or None."""
        if camera in self.values:
            return None
        from rclpy.time import Time

        try:
            tf = self.buffer.lookup_transform(self.base_frame, frame_id, Time()).transform
        except self._errors as exc:
            return f"no TF {self.base_frame} <- {frame_id!r} yet: {exc}"
        t, q = tf.translation, tf.rotation
        self.values[camera] = [t.x, t.y, t.z, q.x, q.y, q.z, q.w]
        return None

    def close(self) -> None:
        """Stop listening (a new configure makes a new listener)."""
        unregister = getattr(self.listener, "unregister", None)
        if unregister is not None:
            unregister()

    def camera_to_base(self) -> list[float] | None:
        """The flattened ``camera_to_base`` once every camera's extrinsic is known, else None."""
        if len(self.values) < self.cameras:
            return None
        return [v for camera in range(self.cameras) for v in self.values[camera]]
