"""segment.launch.py under launch_testing: the launch file starts segment_node from the colcon
workspace (test/ros2_kit.py) in a namespace with the test's checkpoint; real CamVid frames
of the sample drive go in as sensor_msgs/Image, and the labels that come back have the
frames' headers and size and equal an in-process Segmenter's on the same checkpoint; the
node exits with code 0 when the launch shuts down.

Run with ``python -m pytest test`` (launch_testing's pytest plugin), or ``PYTHONPATH=test
launch_test test/launch/segment_launch.test.py``.
"""
import os
import unittest

import launch
import launch_testing
import launch_testing.actions
import launch_testing.asserts
import numpy as np
import pytest
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

import ros2_kit

DOMAIN = 85
NAMESPACE = 'lt'
TOPIC = '/lt/image_raw'
FRAMES = 3
_saved_env = {}


def _tiny_checkpoint(folder):
    """A small seeded checkpoint with the CamVid classes (the tests' tiny model)."""
    from msaf_core import save_checkpoint

    from conftest import make_tiny_model
    path = folder / 'tiny.pt'
    if not path.exists():
        save_checkpoint(path, make_tiny_model(), train_resolution=(64, 64))
    return path


def _camvid_frames(n):
    """The first ``n`` frames of the sample drive (CamVid 0016E5), decoded to RGB."""
    from msaf_ros.bag.io import decode_image, read_topics
    from msaf_ros.tools.sample_drive import sample_drive_path
    out = []
    for conn, _, msg in read_topics(sample_drive_path(), ['/camera/image_raw/compressed']):
        out.append((decode_image(msg, conn.msgtype), msg.header.stamp.sec,
                    msg.header.stamp.nanosec))
        if len(out) == n:
            break
    return out


@pytest.mark.launch_test
def generate_test_description():
    ws = ros2_kit.workspace()
    env = ws.env(DOMAIN)
    for key in ('AMENT_PREFIX_PATH', 'PYTHONPATH', 'ROS_DOMAIN_ID', 'ROS_LOG_DIR',
                'ROS_AUTOMATIC_DISCOVERY_RANGE', 'OMP_NUM_THREADS', 'PYTHONUNBUFFERED'):
        _saved_env.setdefault(key, os.environ.get(key))
        os.environ[key] = env[key]
    checkpoint = _tiny_checkpoint(ws.root)
    source = PythonLaunchDescriptionSource(
        str(ws.install / 'msaf_ros' / 'share' / 'msaf_ros' / 'launch' / 'segment.launch.py'))
    segment = IncludeLaunchDescription(source, launch_arguments={
        'namespace': NAMESPACE, 'image_topic': TOPIC, 'checkpoint': str(checkpoint),
        'device': 'cpu'}.items())
    return launch.LaunchDescription([segment, launch_testing.actions.ReadyToTest()]), {
        'checkpoint': checkpoint}


class TestLabels(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        from msaf_ros.tools.node_process import Probe
        cls.probe = Probe(DOMAIN, 'launch_test_probe')

    @classmethod
    def tearDownClass(cls):
        cls.probe.close()

    def test_real_frames_come_back_as_labels(self, proc_output, checkpoint):
        import torch
        from msaf_core import Segmenter
        from sensor_msgs.msg import Image

        from helpers import image_msg, msg_array
        proc_output.assertWaitFor(f'listening on {TOPIC}', timeout=120, stream='stderr')
        probe = self.probe
        pub = probe.publisher(Image, TOPIC, probe.qos(reliable=True, depth=10))
        box = probe.subscribe(Image, f'/{NAMESPACE}/labels')
        probe.wait_matched([pub], [f'/{NAMESPACE}/labels'])
        torch.set_num_threads(1)
        ref = Segmenter.from_checkpoint(checkpoint, device='cpu')
        for i, (rgb, sec, nsec) in enumerate(_camvid_frames(FRAMES)):
            stamp = sec * 10**9 + nsec
            start = len(box)
            pub.publish(image_msg(rgb, 'camvid', stamp))
            self.assertTrue(probe.spin_until(lambda: len(box) > start, 120), f'frame {i}')
            got = box[-1]
            self.assertEqual((got.header.frame_id, got.header.stamp.sec,
                              got.header.stamp.nanosec), ('camvid', sec, nsec))
            self.assertEqual((got.height, got.width, got.encoding), (360, 480, "mono8"))
            np.testing.assert_array_equal(msg_array(got), ref.segment(rgb, 'camvid', stamp))


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_node_exits_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

    @classmethod
    def tearDownClass(cls):
        for key, value in _saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
