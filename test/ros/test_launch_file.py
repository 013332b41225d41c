"""launch/segment.launch.py and config/msaf.rviz, without ROS: the launch file is parsed
with ``ast`` and run against stand-in ``launch``/``launch_ros`` modules (the real launch is
test/graph/test_launch.py). Also where the package finds its share files."""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from msaf_ros.params import DEFAULTS, USER_PARAMETERS

LAUNCH = ROOT / "launch" / "segment.launch.py"
YAML = ROOT / "config" / "msaf.yaml"
RVIZ = ROOT / "config" / "msaf.rviz"
ARGUMENTS = {"image_topic", "checkpoint", "device", "namespace", "params_file", "use_sim_time",
             "rviz"}


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
    nodes = list(calls(tree, "Node"))
    assert nodes, "no launch_ros Node in the launch file"
    seen = set()
    for call in nodes:
        kw = {k.arg: value_of(k.value, consts) for k in call.keywords if k.arg}
        pkg, exe = kw.get("package"), kw.get("executable")
        seen.add((pkg, exe))
        if pkg == "msaf_ros":
            assert exe in scripts, f"{exe!r} is not a console script of setup.py {scripts}"
        else:
            assert (pkg, exe) == ("rviz2", "rviz2"), (pkg, exe)
    assert ("msaf_ros", "segment_node") in seen


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
    allowed = {"os", "tempfile", "zlib", "yaml", "launch", "launch.actions", "launch.substitutions",
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


# -- the launch logic against stand-in launch modules ------------------------------------------
class _Rec:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


def _fake_modules():
    mods = {name: types.ModuleType(name) for name in
            ("launch", "launch.actions", "launch.substitutions", "launch_ros",
             "launch_ros.actions")}
    mods["launch"].LaunchDescription = lambda entities: list(entities)
    mods["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument", (_Rec,), {})
    mods["launch.actions"].OpaqueFunction = type("OpaqueFunction", (_Rec,), {})
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (_Rec,), {})
    return mods


@pytest.fixture
def fake_launch(monkeypatch):
    for name, mod in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("msaf_segment_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description()
    args = {e.args[0]: e.kwargs["default_value"] for e in entities
            if type(e).__name__ == "DeclareLaunchArgument"}
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"][0]

    def run(**overrides):
        ctx = types.SimpleNamespace(launch_configurations={**args, **overrides})
        return opaque.kwargs["function"](ctx)
    return types.SimpleNamespace(module=module, defaults=args, run=run)


def test_launch_defaults(fake_launch):
    d = fake_launch.defaults
    assert set(d) == ARGUMENTS
    assert Path(d["params_file"]).resolve() == YAML.resolve() or \
        Path(d["params_file"]).name == "msaf.yaml"
    actions = fake_launch.run()
    assert len(actions) == 1                              # no rviz by default
    node = actions[0]
    assert node.kwargs["package"] == "msaf_ros" and node.kwargs["executable"] == "segment_node"
    assert node.kwargs["name"] == "segment_node" and "namespace" not in node.kwargs
    params = node.kwargs["parameters"][0]
    assert params == {**DEFAULTS, "use_sim_time": False}
    assert node.kwargs["remappings"] == [("image", "/camera/image_raw")]


def test_launch_overrides_namespace_and_rviz(fake_launch, tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("/front/segment_node:\n  ros__parameters:\n    overlay_alpha: 0.8\n"
                   "    qos_overrides:\n      /front/image:\n        subscription:\n"
                   "          depth: 1\n")
    actions = fake_launch.run(checkpoint="/m/model.pt", device="cpu", namespace="front",
                              params_file=str(own), use_sim_time="true", rviz="true",
                              image_topic="/cam_front/image_raw")
    node, rviz = actions
    params = node.kwargs["parameters"][0]
    assert params["checkpoint"] == "/m/model.pt" and params["device"] == "cpu"
    assert params["overlay_alpha"] == 0.8 and params["use_sim_time"] is True
    assert params["qos_overrides"] == {"/front/image": {"subscription": {"depth": 1}}}
    assert node.kwargs["namespace"] == "front"
    assert node.kwargs["remappings"] == [("image", "/cam_front/image_raw")]
    assert rviz.kwargs["package"] == "rviz2" and rviz.kwargs["arguments"][0] == "-d"
    cfg_path = rviz.kwargs["arguments"][1]
    try:
        cfg = yaml.safe_load(Path(cfg_path).read_text())
        topics = {d["Name"]: d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"]}
        assert topics == {"Input": "/cam_front/image_raw", "Overlay": "/front/overlay",
                          "Color mask": "/front/color_mask"}
    finally:
        os.unlink(cfg_path)


def test_resources_find_the_share_files():
    from msaf_ros import resources
    assert resources.default_params_file().is_file()
    assert resources.rviz_config().is_file()
    assert resources.launch_file().is_file()
    assert resources.default_params_file().read_text() == YAML.read_text()
    assert resources.candidates()[-1] == ROOT


def test_params_file_entries_for_other_namespaces_are_ignored(fake_launch, tmp_path):
    """One params file for several cameras: each launch takes the wildcard entries, then its
    own node's entry; another namespace's entry never leaks in, whatever the file order."""
    own = tmp_path / "cams.yaml"
    own.write_text("/front/segment_node:\n  ros__parameters:\n    device: cuda:0\n"
                   "/**:\n  ros__parameters:\n    overlay_alpha: 0.3\n    device: cpu\n"
                   "/rear/segment_node:\n  ros__parameters:\n    device: cuda:1\n"
                   "segment_node:\n  ros__parameters:\n    device: auto\n")
    node_parameters = fake_launch.module.node_parameters
    assert node_parameters(str(own), "front") == {"device": "cuda:0", "overlay_alpha": 0.3}
    assert node_parameters(str(own), "/rear/") == {"device": "cuda:1", "overlay_alpha": 0.3}
    assert node_parameters(str(own), "") == {"device": "auto", "overlay_alpha": 0.3}
    assert node_parameters(str(own), "side") == {"device": "cpu", "overlay_alpha": 0.3}
    (node,) = fake_launch.run(namespace="rear", params_file=str(own))
    assert node.kwargs["parameters"][0]["device"] == "cuda:1"
