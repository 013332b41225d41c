"""Where the package's files live: the share directory (config/msaf.yaml, config/msaf.rviz,
launch/) and the data shipped inside the package (the sample drive, ``DATA_DIR``).

Looked up in order:

1. ``ament_index_python.get_package_share_directory('msaf_ros')`` (a colcon workspace or a
   ROS 2 install where the package is indexed);
2. ``<sys.prefix>/share/msaf_ros`` (a pip install puts setup.py's data_files there);
3. the source tree (an editable install or a checkout: the repository root).

A directory counts only if it holds ``config/msaf.yaml``. Imports no rclpy.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

PACKAGE = "msaf_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
#: Data installed inside the package (msaf_ros/data: the sample drive).
DATA_DIR = Path(__file__).resolve().parent / "data"


def _ament_share() -> Optional[Path]:
    try:
        from ament_index_python.packages import get_package_share_directory  # noqa: PLC0415
        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - not installed, or the package is not indexed
        return None


def candidates() -> List[Path]:
    """Candidate share directories, most specific first."""
    out = []
    ament = _ament_share()
    if ament is not None:
        out.append(ament)
    out.append(Path(sys.prefix) / "share" / PACKAGE)
    out.append(SOURCE_ROOT)
    return out


def share_dir() -> Path:
    """The first candidate that holds config/msaf.yaml (the source tree as a last resort)."""
    for d in candidates():
        if (d / "config" / "msaf.yaml").is_file():
            return d
    return SOURCE_ROOT


def config_file(name: str = "msaf.yaml") -> Path:
    """Path of ``config/<name>`` in the share directory."""
    return share_dir() / "config" / name


def default_params_file() -> Path:
    return config_file("msaf.yaml")


def rviz_config() -> Path:
    return config_file("msaf.rviz")


def launch_file(name: str = "segment.launch.py") -> Path:
    return share_dir() / "launch" / name
