"""The node's parameter table and its checks (no ROS)."""
from __future__ import annotations

import pytest
import yaml

from conftest import ROOT
from msaf_ros.params import (DEFAULTS, MIN_SIDE, PARAMETERS, PARAMS_FILE_KEY, USER_PARAMETERS,
                             ConfigError, validate, yaml_text)

YAML = ROOT / "config" / "msaf.yaml"


def test_validate_messages_name_the_parameter():
    assert validate(DEFAULTS)["device"] == "auto"
    for bad, name in ((dict(device="tpu"), "device"), (dict(input_transport="x"),
                      "input_transport"), (dict(qos_reliability="x"), "qos_reliability"),
                      (dict(overlay_alpha=3.0), "overlay_alpha"),
                      (dict(inference_height=0, inference_width=64), "inference_height")):
        with pytest.raises(ConfigError) as e:
            validate({**DEFAULTS, **bad})
        assert f"parameter '{name}'" in str(e.value) and "\n" not in str(e.value)
    assert validate({**DEFAULTS, "device": "CUDA:1"})["device"] == "cuda:1"


def test_min_side_is_the_networks():
    """The callback's size check and the model agree on the smallest frame side."""
    segmenter = pytest.importorskip("msaf_core.segmenter")
    assert MIN_SIDE == segmenter.MIN_SIZE


def test_yaml_keys_are_the_declared_parameters():
    data = yaml.safe_load(YAML.read_text())
    assert list(data) == [PARAMS_FILE_KEY] == ["/**/segment_node"]   # any namespace
    params = data[PARAMS_FILE_KEY]["ros__parameters"]
    assert yaml.safe_load(yaml_text()) == data
    assert set(params) == set(USER_PARAMETERS)
    assert params == DEFAULTS                          # the node's in-code defaults agree
    for p in PARAMETERS:
        if p.output:
            continue
        v = params[p.name]
        want = {"string": str, "bool": bool, "int": int, "double": float}[p.type]
        assert type(v) is want, (p.name, v)
        if p.range is not None:
            assert p.range[0] <= v <= p.range[1]
        if p.choices is not None:
            assert v in p.choices


def test_yaml_defaults_validate():
    params = yaml.safe_load(YAML.read_text())[PARAMS_FILE_KEY]["ros__parameters"]
    assert validate(params)["device"] == "auto"


def test_ros_free_modules_import_no_rclpy():
    """Everything but the node's wiring and the benchmarks' probe imports without rclpy: the
    library modules, msaf-bag and the tools' entry points."""
    import subprocess
    import sys
    modules = ["msaf_ros." + m for m in (
        "errors", "cli", "params", "image_codec", "msgs", "runtime", "worker", "diagnostics",
        "model", "resources", "segment_node", "bag.io", "bag.plan", "bag.reorder",
        "bag.scoring", "bag.output", "bag.segment", "bag.result", "bag.cli", "tools.demo",
        "tools.sample_drive", "tools.bench_node", "tools.soak", "tools.harness",
        "tools.report", "tools.node_process")]
    code = f"import sys; import {', '.join(modules)}; print('rclpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
