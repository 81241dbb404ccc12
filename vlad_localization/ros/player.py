"""A minimal ``ros2 bag play --clock`` for machines without rosbag2 (tests, demos).

Publishes the bag's messages as recorded (serialized CDR, untouched) with the bag's timing scaled
by ``rate``, and ``/clock`` (``rosgraph_msgs/Clock``) at each message's receive time, so nodes
with ``use_sim_time:=true`` see the recording's time. Read with ``rosbags`` (.db3 and .mcap).
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from vlad_localization.images.frames import seconds
from vlad_localization.ros.messages import ns_to_stamp


def message_class(msgtype: str):
    """``'sensor_msgs/msg/Image'`` -> the rclpy message class."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def play_bag(node, bag: str | Path, rate: float = 1.0, topics: list[str] | None = None,
             reliable: bool = True, clock: bool = True) -> int:
    """Publish ``bag`` (optionally only ``topics``) from ``node``; returns the messages sent.

    Blocks while playing; ``node`` needs no spinning (publishing only)."""
    from rosbags.highlevel import AnyReader

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    clock_pub = node.create_publisher(Clock, "/clock", 10) if clock else None
    sent = 0
    with AnyReader([Path(bag)]) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        pubs = {c.id: node.create_publisher(message_class(c.msgtype), c.topic, qos) for c in conns}
        _wait_for_subscribers(list(pubs.values()), timeout=10.0)
        t_wall0 = t_bag0 = None
        for conn, t_ns, raw in reader.messages(connections=conns):
            if t_bag0 is None:
                t_wall0, t_bag0 = time.monotonic(), t_ns
            delay = t_wall0 + seconds(t_ns - t_bag0) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if clock_pub is not None:
                clock_pub.publish(Clock(clock=ns_to_stamp(t_ns)))
            pubs[conn.id].publish(bytes(raw))
            sent += 1
    return sent


def _wait_for_subscribers(pubs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
        time.sleep(0.05)
