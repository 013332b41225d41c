"""Self-describing checkpoints: round trip and every failure, each a typed error naming the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msaf_core import (CheckpointCorruptError, CheckpointError, CheckpointFormatError,
                       CheckpointMismatchError, CheckpointNotFoundError, MSAFConfig, Segmenter,
                       load_checkpoint, read_checkpoint, save_checkpoint)

from conftest import make_tiny_model


def test_round_trip(tmp_path):
    model = make_tiny_model(variant="without_dcn")
    path = save_checkpoint(tmp_path / "m.pt", model, train_resolution=(256, 256),
                           metrics={"camvid_val_miou": 0.5})
    raw = torch.load(path, weights_only=True)  # loads with weights_only
    assert raw["class_names"][3] == "Road" and raw["train_resolution"] == [256, 256]
    assert raw["mean"] == list(model.cfg.mean) and raw["channel_order"] == "RGB"
    assert raw["palette"][0] == [128, 128, 128]
    m2, ck = load_checkpoint(path)
    assert m2.cfg == model.cfg and ck["metrics"]["camvid_val_miou"] == 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert not m2.training


def test_half_storage_loads_as_float32(tmp_path):
    model = make_tiny_model()
    path = save_checkpoint(tmp_path / "h.pt", model, half=True)
    raw = torch.load(path, weights_only=True)
    assert raw["state_dict"]["reduce.0.weight"].dtype == torch.float16
    m2, _ = load_checkpoint(path)
    w = m2.state_dict()["reduce.0.weight"]
    assert w.dtype == torch.float32
    assert torch.allclose(w, model.state_dict()["reduce.0.weight"], atol=1e-3)


def test_half_storage_keeps_out_of_range_tensors_in_float32(tmp_path):
    """A BatchNorm running variance of 1e5 would become inf in float16: it stays float32."""
    model = make_tiny_model()
    model.reduce[1].running_var.fill_(1e5)
    path = save_checkpoint(tmp_path / "h.pt", model, half=True)
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert raw["reduce.1.running_var"].dtype == torch.float32
    assert raw["reduce.0.weight"].dtype == torch.float16
    m2, _ = load_checkpoint(path)
    assert torch.equal(m2.state_dict()["reduce.1.running_var"], model.reduce[1].running_var)


def test_segmenter_from_checkpoint(tmp_path, val_frames):
    model = make_tiny_model()
    path = save_checkpoint(tmp_path / "m.pt", model)
    seg = Segmenter.from_checkpoint(path)
    f = val_frames[0][0]
    np.testing.assert_array_equal(seg.segment(f), Segmenter(make_tiny_model()).segment(f))
    assert seg.checkpoint["path"] == str(path)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotFoundError, match="nope.pt: no such file"):
        load_checkpoint(p)
    with pytest.raises(CheckpointNotFoundError, match="not a regular file"):
        load_checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_tiny_model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorruptError, match="m.pt: .*truncated or damaged"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="m.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["text", "state_dict", "other_dict", "pickle"])
def test_foreign_files(tmp_path, content):
    path = tmp_path / "foreign.pt"
    if content == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif content == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif content == "other_dict":
        torch.save({"format": "yolo", "model": 1}, path)
    else:
        import pickle
        path.write_bytes(pickle.dumps(object()))
    with pytest.raises(CheckpointError, match="foreign.pt") as e:
        read_checkpoint(path)
    assert isinstance(e.value, (CheckpointFormatError, CheckpointCorruptError))


def test_config_that_does_not_fit(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_tiny_model())
    with pytest.raises(CheckpointMismatchError, match="m.pt: has 11 classes but 19"):
        load_checkpoint(path, num_classes=19)
    ck = torch.load(path, weights_only=True)
    ck["config"]["dim"] = 32  # weights are dim 16
    torch.save(ck, path)
    with pytest.raises(CheckpointMismatchError, match="weights do not fit its config"):
        load_checkpoint(path)
    ck["config"]["backbone"] = "alexnet"
    torch.save(ck, path)
    with pytest.raises(CheckpointMismatchError, match="config is invalid"):
        load_checkpoint(path)
    ck["config"] = MSAFConfig(dim=16, heads=2, dcn_groups=2).to_dict()
    ck["version"] = 99
    torch.save(ck, path)
    with pytest.raises(CheckpointFormatError, match="version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["png", "jpeg", "numpy", "pickled_module", "pickle", "text",
                                     "zip"])
def test_foreign_files_say_what_they_are_and_never_advise_unsafe_loading(tmp_path, content):
    """torch's advice to re-run torch.load with weights_only=False is never passed on: the
    message says what the file is and what to pass instead (issue 16, item 3)."""
    import io
    import pickle
    import zipfile

    import numpy as np
    from PIL import Image
    path = tmp_path / "model.pt"
    if content in ("png", "jpeg"):
        b = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(b, format=content.upper())
        path.write_bytes(b.getvalue())
    elif content == "numpy":
        torch.save({"weights": np.zeros(3)}, path)
    elif content == "pickled_module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"x": 1}, protocol=4))
    elif content == "text":
        path.write_text("hello")
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not a checkpoint")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # no torch warnings reach the user either
        with pytest.raises(CheckpointFormatError) as e:
            read_checkpoint(path)
    text = str(e.value)
    assert "weights_only" not in text and "False" not in text and "trust" not in text, text
    assert "model.pt" in text and "msaf-train" in text and len(text.splitlines()) == 1
    if content in ("png", "jpeg"):
        assert f"is a {content.upper()} image, not a checkpoint" in text
    if content in ("numpy", "pickled_module", "pickle"):
        assert "Python objects" in text
