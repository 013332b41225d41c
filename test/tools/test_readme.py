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
