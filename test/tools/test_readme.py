"""The README's two commands: CI runs exactly the README's test command."""
from conftest import ROOT


def _bash_blocks(text):
    blocks, cur, inside = [], [], False
    for line in text.splitlines():
        if line.strip() == "```bash":
            inside, cur = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(cur).strip())
        elif inside:
            cur.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme.split("## Two commands", 1)[1].split("\n## ", 1)[0])
    assert len(blocks) == 2, blocks
    main_job, tests = blocks
    assert "msaf-demo" in main_job and "pip install" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def _commands(block):
    """The command lines of a bash block (continuations joined, comments dropped)."""
    import shlex
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line.split("&&")[-1]) if line.startswith("colcon")
                       else shlex.split(line))
    return out


def test_ros2_workspace_section_is_what_the_tests_run():
    """Every ros2 / colcon / msaf-bag command of the README's ROS 2 workspace section is run
    by the tests with the same verb, the same launch arguments and options (test/ros2_kit.py
    builds with colcon and sources install/setup.bash; test/graph/test_launch.py runs the
    rest)."""
    import re
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## In a ROS 2 workspace", 1)[1].split("\n## ", 1)[0]
    (block,) = _bash_blocks(section)
    tests = "\n".join((ROOT / "test" / f).read_text() for f in
                      ("ros2_kit.py", "graph/test_launch.py"))
    assert "colcon build --packages-select msaf_ros && source install/setup.bash" in block
    assert '"build", "--packages-select", "msaf_ros"' in tests
    assert "source install/setup.bash" in tests
    checked = 0
    for cmd in _commands(block):
        if cmd[0] not in ("ros2", "msaf-bag"):
            continue
        checked += 1
        words = cmd[:2] if cmd[0] == "msaf-bag" else cmd[:3]       # the tool and its verb
        verb = ",\\s*".join(f'"{re.escape(t)}"' for t in words)
        assert re.search(verb, tests), f"no test runs {' '.join(words)}"
        for tok in cmd[3:]:
            if ":=" in tok and not tok.startswith("__"):
                name = tok.split(":=")[0]
                assert f'"{name}:=' in tests, f"no test passes {name}:= ({' '.join(cmd)})"
            elif tok.startswith("--"):
                assert f'"{tok}"' in tests, f"no test passes {tok} ({' '.join(cmd)})"
    assert checked >= 12
