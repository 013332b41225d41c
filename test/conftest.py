"""Shared fixtures: real CamVid frames, tiny seeded models and checkpoints."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("MSAF_CAMVID", ROOT.parent / "shared" / "camvid"))

# Keep torch from oversubscribing the 2-core CI machine when tests start node processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def camvid_available() -> bool:
    return (CAMVID / "val").is_dir() and (CAMVID / "valannot").is_dir()


needs_camvid = pytest.mark.skipif(not camvid_available(), reason=f"CamVid not found at {CAMVID}")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not camvid_available():
        pytest.skip(f"CamVid not found at {CAMVID}")
    return CAMVID


@pytest.fixture(scope="session")
def val_frames(camvid_root):
    """The first 6 frames of the 15 Hz val clip (480×360 RGB uint8) and their labels."""
    from PIL import Image
    names = sorted(p.name for p in (camvid_root / "val").glob("*.png"))[:6]
    frames = [np.asarray(Image.open(camvid_root / "val" / n).convert("RGB")) for n in names]
    labels = [np.asarray(Image.open(camvid_root / "valannot" / n)) for n in names]
    return frames, labels


def make_tiny_model(seed: int = 0, **cfg_kw):
    """A seeded ResNet-18 MSAF of width 16 whose BN scales are non-zero (outputs vary)."""
    import torch
    from msaf_core import MSAF, MSAFConfig
    torch.manual_seed(seed)
    kw = dict(dim=16, heads=2, dcn_groups=2)
    kw.update(cfg_kw)
    model = MSAF(MSAFConfig(**kw))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small self-describing checkpoint (random weights, CamVid classes) on disk."""
    from msaf_core import save_checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_tiny_model(), train_resolution=(64, 64), metrics={"note": "random"})
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared, loaded 2-core machine this is ~30x
    faster for the small models of the bag tests."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def ros2_ws():
    """This package built with colcon in a temporary workspace (test/ros2_kit.py); skipped
    with the reason where the ROS 2 launch/CLI kit is not installed."""
    import ros2_kit
    why = ros2_kit.missing()
    if why:
        pytest.skip(why)
    return ros2_kit.workspace()


# launch_testing files (``test/launch/*.test.py``, the upstream naming) go to launch_testing's
# pytest plugin, or are skipped with the reason where the kit is not installed.
class _KitMissing(pytest.File):
    def collect(self):
        import ros2_kit
        pytest.skip(ros2_kit.missing())


def pytest_collect_file(file_path, parent):
    if not file_path.name.endswith(".test.py") or parent.session.isinitpath(file_path):
        return None                  # a file named on the command line is collected anyway
    import importlib.util
    import sys

    import ros2_kit
    if ros2_kit.missing():
        return _KitMissing.from_parent(parent, path=file_path)
    # pytest would import "name.test" as module "test" of a package "name": load it by path
    # under the name pytest looks for; launch_testing's plugin takes it from there.
    name = file_path.name[:-len(".py")]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, file_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    ihook = parent.session.gethookproxy(file_path)
    return ihook.pytest_pycollect_makemodule(module_path=file_path, parent=parent)


#: The order the suites run in: the library and the ROS-free units first, then the programs,
#: then everything that brings up rclpy, DDS and the launch system inside this process
#: (whose native state stays loaded for the rest of the run).
SUITE_ORDER = ("core", "ros", "tools", "graph", "launch")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        try:
            first = Path(str(item.path)).resolve().relative_to(ROOT / "test").parts[0]
        except ValueError:
            return len(SUITE_ORDER)
        return SUITE_ORDER.index(first) if first in SUITE_ORDER else len(SUITE_ORDER)
    items.sort(key=rank)
