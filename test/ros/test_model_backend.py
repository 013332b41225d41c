"""Model loading for the node and the tools with an inference-engine backend (no ROS)."""
from __future__ import annotations

import sys

import pytest

from msaf_ros.errors import MsafRosError
from msaf_ros.model import load_model, load_node_model
from msaf_ros.params import DEFAULTS, ConfigError, validate


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_missing_engine_stops_the_node_naming_backend_and_the_extra(monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)      # as if not installed
    cfg = validate({**DEFAULTS, "backend": backend, "device": "cpu"})
    with pytest.raises(ConfigError) as e:
        load_node_model(cfg)
    msg = str(e.value)
    assert e.value.param == "backend" and "\n" not in msg
    assert f"pip install .[{backend}]" in msg


def test_backend_parameter_is_checked():
    assert validate({**DEFAULTS, "backend": "OpenVINO"})["backend"] == "openvino"
    with pytest.raises(ConfigError, match="parameter 'backend'"):
        validate({**DEFAULTS, "backend": "tflite"})


def test_tools_get_a_one_line_error_for_a_missing_engine(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MsafRosError) as e:
        load_model(None, "cpu", backend="openvino")
    assert "pip install .[openvino]" in str(e.value) and "\n" not in str(e.value)
