"""msaf_ros: real-time video semantic segmentation with MSAF for ROS 2 (ament_python).

One distribution, two Python packages: ``msaf_core`` (the model, no ROS imports) and
``msaf_ros`` (the node, bag tools). Installs the same way with colcon and with pip.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "msaf_ros"

# PyPI builds of ROS 2 Kilted, for machines without a ROS 2 installation. On a ROS 2 install
# rclpy, sensor_msgs, std_msgs and diagnostic_msgs come from the distro instead.
ROS_WHEELS = ["ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-diagnostic-msgs",
              "ros-rmw-fastrtps-cpp", "ros-ament-index-python"]

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={"msaf_core": ["weights/*.pt", "weights/*.json"],
                  "msaf_ros": ["data/*.mcap", "data/*.yaml", "data/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "setuptools",
        "numpy",
        "torch",
        "torchvision",
        "pillow",
        "tqdm",
        "rosbags>=0.11",  # single-file .mcap bags, StoragePlugin, MessageDefinitionFormat
        "rosbags-image>=0.9",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        "eval": ["opencv-python-headless"],
        # inference engines (msaf-export --format, Segmenter backend=...; docs/deploy.md);
        # onnx + onnxscript are what torch's ONNX exporter needs
        "onnxruntime": ["onnxruntime", "onnx", "onnxscript"],
        "openvino": ["openvino", "onnx", "onnxscript"],
        "int8": ["nncf", "openvino", "onnx", "onnxscript"],
        "test": ["pytest", "hypothesis", "opencv-python-headless",
                 "onnx", "onnxscript", "onnxruntime", "openvino", "nncf"],
    },
    zip_safe=False,
    maintainer="msaf_ros developers",
    maintainer_email="msaf-ros@example.com",
    description="Real-time video semantic segmentation (MSAF) for ROS 2 cameras and rosbags",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segment_node = msaf_ros.segment_node:main",
            "segment_lifecycle_node = msaf_ros.lifecycle:main",
            "msaf-train = msaf_core.tools.train:main",
            "msaf-eval = msaf_core.tools.evaluate:main",
            "msaf-export = msaf_core.tools.export:main",
            "msaf-bench = msaf_core.tools.bench:main",
            "msaf-bag = msaf_ros.bag.cli:main",
            "msaf-demo = msaf_ros.tools.demo:main",
            "msaf-bench-node = msaf_ros.tools.bench_node:main",
            "msaf-soak = msaf_ros.tools.soak:main",
        ],
    },
)
