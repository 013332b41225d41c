"""package.xml: every dependency is a rosdep key that resolves on Humble, Jazzy and Kilted
(so ``rosdep install --from-paths src --ignore-src`` works), and every one is used.

The keys, and where rosdep finds them:

- ROS packages resolve through each distribution's ``distribution.yaml`` in ros/rosdistro
  (``humble/``, ``jazzy/``, ``kilted/``), where these repositories are released for all
  three: ros2/rclpy (rclpy), ros2/common_interfaces (sensor_msgs, std_msgs,
  diagnostic_msgs), ros2/rcl_interfaces (rcl_interfaces, rosgraph_msgs), ament/ament_index
  (ament_index_python), ros2/launch (launch, launch_testing), ros2/launch_ros (launch_ros).
- System keys come from ros/rosdistro ``rosdep/python.yaml`` (read at commit
  000730dc5f916eb05b15d3f183bd1c17bf1b4722), where each has an ``ubuntu`` entry that
  resolves on jammy and noble (Ubuntu of Humble; Jazzy and Kilted).
- The ament_python template (``ros2 pkg create --build-type ament_python``, ros2/ros2cli
  ros2pkg/verb/create.py) declares no buildtool_depend: ``ament_python`` is a build type
  (``<export><build_type>``), not a rosdep key.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from conftest import ROOT

ROS_PACKAGES = {   # key: (source repository in distribution.yaml, Python module)
    "rclpy": ("ros2/rclpy", "rclpy"),
    "sensor_msgs": ("ros2/common_interfaces", "sensor_msgs"),
    "std_msgs": ("ros2/common_interfaces", "std_msgs"),
    "diagnostic_msgs": ("ros2/common_interfaces", "diagnostic_msgs"),
    "rcl_interfaces": ("ros2/rcl_interfaces", "rcl_interfaces"),
    "rosgraph_msgs": ("ros2/rcl_interfaces", "rosgraph_msgs"),
    "ament_index_python": ("ament/ament_index", "ament_index_python"),
    "launch": ("ros2/launch", "launch"),
    "launch_testing": ("ros2/launch", "launch_testing"),
    "launch_ros": ("ros2/launch_ros", "launch_ros"),
}
PYTHON_YAML = {    # key: (its ubuntu entry in rosdep/python.yaml, Python module)
    "python3-numpy": ("[python3-numpy]", "numpy"),
    "python3-yaml": ("[python3-yaml]", "yaml"),
    "python3-pil": ("[python3-pil]", "PIL"),
    "python3-tqdm": ("'*': [python3-tqdm], xenial: null", "tqdm"),
    "python3-opencv": ("[python3-opencv]", "cv2"),
    "python3-pytest": ("[python3-pytest]", "pytest"),
    "python3-hypothesis": ("[python3-hypothesis]", "hypothesis"),
}
KNOWN = {**ROS_PACKAGES, **PYTHON_YAML}


def deps():
    root = ET.parse(ROOT / "package.xml").getroot()
    out = {}
    for el in root:
        if el.tag.endswith("depend"):
            out.setdefault(el.tag, []).append(el.text.strip())
    return root, out


def sources(*folders):
    return "\n".join(p.read_text(errors="replace") for f in folders
                     for p in (ROOT / f).rglob("*.py"))


def test_every_key_resolves_and_none_is_a_build_type():
    root, d = deps()
    assert "buildtool_depend" not in d              # as the ament_python template
    assert root.find("export/build_type").text == "ament_python"
    for tag, keys in d.items():
        assert len(keys) == len(set(keys)), (tag, keys)
        for key in keys:
            assert key in KNOWN, f"<{tag}>{key}</{tag}> is not a key known to resolve"
    assert set(d) == {"exec_depend", "test_depend"}


def test_rviz_is_optional_and_every_dependency_is_used():
    _, d = deps()
    assert "rviz2" not in sum(d.values(), [])       # rviz:=true is optional
    code = sources("msaf_ros", "launch")
    tests = sources("test")
    for key in d["exec_depend"]:
        module = KNOWN[key][1]
        assert re.search(rf"^\s*(from|import) {module}\b", code, re.M), \
            f"exec_depend {key}: nothing in msaf_ros/ or launch/ imports {module}"
    for key in d["test_depend"]:
        module = KNOWN[key][1]
        assert re.search(rf"\b{module}\b", tests), f"test_depend {key}: no test uses {module}"
        assert key not in d["exec_depend"]
    # opencv is for evaluation and the tests only: the node and msaf-bag run without it
    assert "python3-opencv" in d["test_depend"]
