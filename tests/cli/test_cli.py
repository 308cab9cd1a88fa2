"""The command line: one component loaded, its own usage on errors, one-line credential errors."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from dra_driver import cli
from tests.support import components

COMMANDS = list(components.OWNERS)


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_a_component_registers_only_its_own_metric_series(command: str) -> None:
    loaded = components.series(command)

    foreign = {
        name: module
        for name, module in loaded.items()
        if components.owner(module) not in (None, command)
    }
    own = [name for name, module in loaded.items() if components.owner(module) == command]
    assert foreign == {}, f"{command} exports other components' series"
    assert own, f"{command} exports none of its own series"


@pytest.mark.parametrize(
    "args",
    [["--help"], *([c, "--help"] for c in COMMANDS)],
    ids=["top-level", *COMMANDS],
)
def test_help_loads_no_api_client(args: list[str]) -> None:
    assert components.loaded_for_help(*args) == []


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_an_unknown_flag_shows_that_subcommands_usage(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--no-such-flag"])

    error = capsys.readouterr().err
    assert exited.value.code == 2
    assert error.startswith(f"usage: gvirtus-dra {command} ")
    assert error.strip().endswith("error: unrecognized arguments: --no-such-flag")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "no such file", id="missing"),
        pytest.param("foo: [\n", "not valid YAML at line 2", id="malformed"),
        pytest.param("just text", "not a kubeconfig (expected a mapping)", id="not-a-mapping"),
        pytest.param("apiVersion: v1\nkind: Config\n", "names no current-context", id="no-context"),
        pytest.param(
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\ncontexts: []\n",
            "",
            id="context-not-defined",
        ),
    ],
)
def test_an_unusable_kubeconfig_is_one_line_naming_the_file(
    tmp_path: pathlib.Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)

    finished = subprocess.run(
        [sys.executable, "-m", "dra_driver", "controller", "--kubeconfig", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    errors = [line for line in finished.stderr.splitlines() if " INFO " not in line]
    assert finished.returncode == 1
    assert len(errors) == 1, finished.stderr
    assert f"cannot load API credentials from kubeconfig {path}: {problem}" in errors[0]
