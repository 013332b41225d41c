"""msaf_ros: the ROS 2 side of MSAF (segmentation node, image codec, bag tools).

Importing this package does not import rclpy; the node module does.
"""

__version__ = "0.1.0"
