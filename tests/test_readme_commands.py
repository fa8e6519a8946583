"""CI must run exactly what a new user runs: README's test command, verbatim, in a fresh venv."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_readme_test_command_verbatim_with_nothing_installed_before():
    test_command = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_command) == 1, "README must have exactly one bash block running pytest"
    command = test_command[0].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    lines = [line.strip() for line in ci]
    assert command in lines, f".ci/run does not run README's test command verbatim: {command!r}"
    before = lines[:lines.index(command)]
    assert any("venv" in line for line in before), ".ci/run must create a fresh virtual environment"
    installs = [line for line in before if not line.startswith("#") and re.search(r"\bpip\b|\binstall\b", line)]
    assert not installs, f".ci/run installs something before README's command: {installs}"


def test_quick_start_installs_what_the_example_needs_for_its_promised_outputs():
    quick = [c for c in _readme_commands() if "examples/mnist_mlp.py" in c]
    assert quick, "README must show the quick-start command"
    assert "[plot]" in quick[0], "the quick start promises curves.png, which needs the plot extra (matplotlib)"
