"""launch/segment.launch.py and config/msaf.rviz, without ROS: the launch file is parsed
with ``ast`` (its behaviour is tested with the real ``ros2 launch`` in
test/graph/test_launch.py and test/launch/). Also where the package finds its share files."""
from __future__ import annotations

import ast

import yaml

from conftest import ROOT
from msaf_ros.params import USER_PARAMETERS

LAUNCH = ROOT / "launch" / "segment.launch.py"
YAML = ROOT / "config" / "msaf.yaml"
RVIZ = ROOT / "config" / "msaf.rviz"
ARGUMENTS = {"image_topic", "checkpoint", "device", "namespace", "params_file", "use_sim_time",
             "rviz", "lifecycle"}


def console_scripts():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    return {s.split("=")[0].strip() for s in ast.literal_eval(v)}
    raise AssertionError("no console_scripts in setup.py")


def launch_tree():
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def constants(tree):
    """Module-level NAME = <literal> assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def value_of(expr, consts):
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, ast.Name) and expr.id in consts:
        return consts[expr.id]
    return None


def calls(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
            if fname == name:
                yield node


# -- static ------------------------------------------------------------------------------------
def test_launch_names_only_existing_executables():
    tree = launch_tree()
    consts = constants(tree)
    scripts = console_scripts()
    for name in ("EXECUTABLE", "LIFECYCLE_EXECUTABLE"):
        assert consts[name] in scripts, f"{consts[name]!r} is not a console script {scripts}"
    nodes = list(calls(tree, "Node"))
    assert len(nodes) == 2, "segment_node and rviz2"
    packages = set()
    for call in nodes:
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        pkg = value_of(kw["package"], consts)
        packages.add(pkg)
        if pkg == "rviz2":
            assert value_of(kw["executable"], consts) == "rviz2"
        else:
            assert pkg == "msaf_ros" and value_of(kw["name"], consts) == "segment_node"
            assert ast.unparse(kw["executable"]) == \
                "LIFECYCLE_EXECUTABLE if lifecycle else EXECUTABLE"
            assert "emulate_tty" not in kw          # a tty makes rcutils write ANSI colours
    assert packages == {"msaf_ros", "rviz2"}


def test_launch_arguments_and_parameters():
    tree = launch_tree()
    consts = constants(tree)
    declared = {value_of(c.args[0], consts) for c in calls(tree, "DeclareLaunchArgument")}
    assert declared == ARGUMENTS
    # Parameters the launch file sets on the node are parameters the node declares.
    assert set(consts["PARAMETER_ARGUMENTS"]) <= set(USER_PARAMETERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id == "params":
            key = value_of(node.slice, consts)
            if key is not None:
                assert key in set(USER_PARAMETERS) | {"use_sim_time"}, key
    assert consts["NODE_NAME"] == "segment_node"


def test_launch_files_exist_and_imports_are_portable():
    tree = launch_tree()
    consts = constants(tree)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str) and n.value.startswith("config/")
               and " " not in n.value]                  # paths, not docstrings
    assert set(strings) == {"config/msaf.yaml", "config/msaf.rviz"}
    for s in strings:
        assert (ROOT / s).is_file(), s
    assert consts["PARAMS_FILE"] == "config/msaf.yaml"
    assert consts["RVIZ_FILE"] == "config/msaf.rviz"
    # Only APIs present in Humble, Jazzy and Kilted.
    allowed = {"os", "re", "tempfile", "zlib", "yaml", "launch", "launch.actions",
               "launch.event_handlers", "launch.events", "launch.substitutions",
               "launch_ros.actions", "ament_index_python.packages", "msaf_ros.resources"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module in allowed, node.module
            if node.module == "launch_ros.actions":
                assert [a.name for a in node.names] == ["Node"]
        elif isinstance(node, ast.Import):
            assert all(a.name in allowed for a in node.names)


def test_rviz_config_is_valid_and_shows_the_topics():
    cfg = yaml.safe_load(RVIZ.read_text())
    displays = cfg["Visualization Manager"]["Displays"]
    images = {d["Name"]: d["Topic"]["Value"] for d in displays
              if d["Class"] == "rviz_default_plugins/Image"}
    consts = constants(launch_tree())
    assert set(images.values()) == set(consts["RVIZ_TOPICS"].values())
    assert images["Overlay"] == "/overlay" and images["Color mask"] == "/color_mask"
    for topic in consts["RVIZ_TOPICS"].values():       # what the launch file rewrites
        assert f"Value: {topic}\n" in RVIZ.read_text()
    assert "Window Geometry" in cfg and cfg["Visualization Manager"]["Class"] == ""


def test_resources_find_the_share_files():
    from msaf_ros import resources
    assert resources.default_params_file().is_file()
    assert resources.rviz_config().is_file()
    assert resources.launch_file().is_file()
    assert resources.default_params_file().read_text() == YAML.read_text()
    assert resources.candidates()[-1] == ROOT


# What RViz 2 (ros2/rviz) registers and reads, from its sources:
# - rviz_default_plugins/plugins_description.xml (commit ff1b2d43e87dc9a5053995e1364be53f3546b685):
#   the plugin class names below (displays, tools, the TF frame transformer, view controllers);
# - rviz_common/default.rviz (commit bfc212a0d24663e5743aba8199e89e2add6d3695): the panels
#   rviz_common registers itself (no plugin description);
# - rviz_default_plugins/src/.../displays/image/image_display.cpp (commit
#   cacc73f15ece4ebda4460966f3ccb38783cd4d7f): the Image display's own properties;
# - rviz_common/src/rviz_common/properties/qos_profile_property.cpp (commit
#   a379141255e9b41799746ca629658a47189a7dc3): the QoS sub-properties of a display's Topic
#   and their values.
RVIZ_PANELS = {"rviz_common/Displays", "rviz_common/Selection", "rviz_common/Tool Properties",
               "rviz_common/Views", "rviz_common/Time"}
RVIZ_DISPLAYS = {"rviz_default_plugins/Image", "rviz_default_plugins/Camera",
                 "rviz_default_plugins/Grid", "rviz_default_plugins/TF"}
RVIZ_TOOLS = {"rviz_default_plugins/Interact", "rviz_default_plugins/MoveCamera",
              "rviz_default_plugins/Select", "rviz_default_plugins/FocusCamera",
              "rviz_default_plugins/Measure", "rviz_default_plugins/SetInitialPose",
              "rviz_default_plugins/SetGoal", "rviz_default_plugins/PublishPoint"}
RVIZ_TRANSFORMERS = {"rviz_default_plugins/TF"}
RVIZ_VIEWS = {"rviz_default_plugins/Orbit", "rviz_default_plugins/FPS",
              "rviz_default_plugins/TopDownOrtho", "rviz_default_plugins/XYOrbit"}
DISPLAY_KEYS = {"Class", "Enabled", "Name", "Value", "Topic"}     # every display saves these
IMAGE_KEYS = {"Normalize Range", "Min Value", "Max Value", "Median window"}
QOS_VALUES = {"History Policy": {"System Default", "Keep Last", "Keep All"},
              "Reliability Policy": {"System Default", "Reliable", "Best Effort"},
              "Durability Policy": {"System Default", "Transient Local", "Volatile"}}


def test_rviz_config_uses_rviz_default_plugins_names_and_properties():
    """config/msaf.rviz names only classes RViz 2 registers and gives the Image displays only
    properties (and QoS values) that rviz_default_plugins reads; their QoS matches what the
    node offers (input: best effort, the sensor-data profile; outputs: reliable)."""
    cfg = yaml.safe_load(RVIZ.read_text())
    assert {p["Class"] for p in cfg["Panels"]} <= RVIZ_PANELS
    vm = cfg["Visualization Manager"]
    assert {t["Class"] for t in vm["Tools"]} <= RVIZ_TOOLS
    assert vm["Transformation"]["Current"]["Class"] in RVIZ_TRANSFORMERS
    assert vm["Views"]["Current"]["Class"] in RVIZ_VIEWS
    displays = vm["Displays"]
    assert {d["Class"] for d in displays} <= RVIZ_DISPLAYS
    for d in displays:
        assert d["Class"] == "rviz_default_plugins/Image"
        assert set(d) <= DISPLAY_KEYS | IMAGE_KEYS, set(d) - DISPLAY_KEYS - IMAGE_KEYS
        topic = d["Topic"]
        assert set(topic) == {"Value", "Depth"} | set(QOS_VALUES), topic
        for key, values in QOS_VALUES.items():
            assert topic[key] in values, (d["Name"], key, topic[key])
        assert isinstance(topic["Depth"], int) and topic["Depth"] >= 1
        want = "Best Effort" if d["Name"] == "Input" else "Reliable"
        assert topic["Reliability Policy"] == want, d["Name"]
