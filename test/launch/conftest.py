"""launch_testing files (``*.test.py``, the upstream naming) collected by plain pytest: each
goes to launch_testing's pytest plugin, or is skipped with the reason where the kit is not
installed."""
from __future__ import annotations

import pytest

import ros2_kit


class _Unavailable(pytest.File):
    def collect(self):
        pytest.skip(ros2_kit.missing())


def pytest_collect_file(file_path, parent):
    if not file_path.name.endswith(".test.py") or parent.session.isinitpath(file_path):
        return None                  # a file named on the command line is collected anyway
    if ros2_kit.missing():
        return _Unavailable.from_parent(parent, path=file_path)
    ihook = parent.session.gethookproxy(file_path)
    return ihook.pytest_pycollect_makemodule(module_path=file_path, parent=parent)
