"""The image codec with rclpy's own message types (where ROS 2 is importable)."""
from __future__ import annotations

import array

import numpy as np
import pytest

from msaf_ros.image_codec import image_to_rgb, labels_to_image, rgb_to_image

pytestmark = pytest.mark.ros
RNG = np.random.default_rng(0)


def test_rclpy_message_type_and_speed_path():
    sensor_msgs = pytest.importorskip("sensor_msgs.msg",
                                      reason="sensor_msgs (ROS 2) not importable")
    rgb = RNG.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    m = rgb_to_image(rgb, "bgr8", msg_type=sensor_msgs.Image)
    assert isinstance(m, sensor_msgs.Image)
    assert isinstance(m.data, array.array) and m.step == 480 * 3
    assert (image_to_rgb(m) == rgb).all()
    lab = RNG.integers(0, 11, (5, 6), dtype=np.uint8)
    lm = labels_to_image(lab, msg_type=sensor_msgs.Image)
    assert lm.encoding == "mono8" and lm.step == 6
    assert (np.frombuffer(lm.data, np.uint8).reshape(5, 6) == lab).all()
