"""Small message helpers shared by the node, the bag tools and the benchmarks.

Header stamps ↔ integer nanoseconds (duck-typed: rclpy and rosbags messages alike) and the
QoS profiles msaf_ros uses. Importing this module imports no rclpy; :func:`qos` does.
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (``sec``, ``nanosec``) as integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def set_stamp(stamp: Any, ns: int) -> None:
    """Write integer nanoseconds into a ``builtin_interfaces/Time`` in place."""
    stamp.sec, stamp.nanosec = divmod(int(ns), NS_PER_S)


def qos(reliable: bool = True, depth: int = 10, latched: bool = False):
    """A keep-last rclpy QoS profile: reliable or best effort, volatile or transient local
    (latched)."""
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile,  # noqa: PLC0415
                           ReliabilityPolicy)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable
                      else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                      else DurabilityPolicy.VOLATILE)
