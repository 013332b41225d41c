"""The node's parameter table and its checks (no ROS)."""
from __future__ import annotations

import pytest

from msaf_ros.params import DEFAULTS, MIN_SIDE, ConfigError, validate


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
