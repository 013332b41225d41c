"""Model loading for the node and the tools with an inference-engine backend (no ROS)."""
from __future__ import annotations

import sys

import pytest

from msaf_ros.errors import MsafRosError
from msaf_ros.model import describe, load_model, load_node_model
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


def test_int8_parameter(tiny_checkpoint, tmp_path, val_frames):
    """int8:=true needs the openvino backend and an export with int8 graphs; either mistake
    stops the node with one line naming int8. With both, the node runs the int8 graphs."""
    cfg = validate({**DEFAULTS, "int8": True, "device": "cpu",
                    "checkpoint": str(tiny_checkpoint)})
    with pytest.raises(ConfigError) as e:
        load_node_model(cfg)                              # backend torch
    assert e.value.param == "int8" and "openvino" in str(e.value)
    pytest.importorskip("openvino", reason="pip install .[openvino]")
    pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript")
    from msaf_core.tools import export as export_tool
    out = tmp_path / "ov"
    assert export_tool.main(["--format", "openvino", str(tiny_checkpoint), str(out)]) == 0
    cfg = validate({**DEFAULTS, "int8": True, "device": "cpu", "backend": "openvino",
                    "checkpoint": str(out)})
    with pytest.raises(ConfigError) as e:
        load_node_model(cfg)                              # an export without int8 graphs
    assert e.value.param == "int8" and "msaf-export --int8" in str(e.value)
    assert "\n" not in str(e.value)
    pytest.importorskip("nncf", reason="int8 quantisation needs nncf (pip install .[int8])")
    from msaf_core.export import quantize_openvino
    quantize_openvino(out, [val_frames[0][0:3]], threads=1)
    seg = load_node_model(cfg)
    assert seg.engine.describe() == "openvino int8"
    assert "with openvino int8" in describe(seg, cfg)
    assert seg.segment(val_frames[0][0], "c", 0).shape == (360, 480)


def test_output_stride_parameter(tiny_checkpoint):
    """output_stride:=16 runs the checkpoint at stride 16; 0 keeps its own; other values
    stop the node with one line naming the parameter."""
    base = {**DEFAULTS, "device": "cpu", "checkpoint": str(tiny_checkpoint)}
    assert load_node_model(validate(base)).cfg.output_stride == 8
    seg16 = load_node_model(validate({**base, "output_stride": 16}))
    assert seg16.cfg.output_stride == 16
    # the node's model line says which stride runs (the benchmarks record that line)
    assert "output stride 16" in describe(seg16, validate({**base, "output_stride": 16}))
    assert "output stride 8" in describe(load_node_model(validate(base)), validate(base))
    for bad in (12, 32):
        with pytest.raises(ConfigError) as e:
            validate({**base, "output_stride": bad})
        assert e.value.param == "output_stride" and "\n" not in str(e.value)
    # the offline tools (msaf-bag segment --output-stride) load the same way
    assert load_model(str(tiny_checkpoint), "cpu", "torch", 16).cfg.output_stride == 16
