"""The command line loads one component: its own metrics, and no API client for ``--help``."""

from __future__ import annotations

import pytest

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
