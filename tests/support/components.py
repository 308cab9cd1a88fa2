"""What a component's process loads, seen from a fresh interpreter.

The command line imports a component the way ``gvirtus-dra <command>`` does
(``dra_driver.cli``), in a new interpreter, so nothing another test imported leaks in.
"""

from __future__ import annotations

import json
import subprocess
import sys

OWNERS = {
    "kubelet-plugin": "dra_driver.plugin",
    "controller": "dra_driver.controller",
    "backend-agent": "backend",
    "webhook": "webhook",
    "labeler": "labeler",
}
"""Each component and the package whose modules only it runs."""

_SERIES = """
import json, sys
from prometheus_client.metrics import MetricWrapperBase
from dra_driver import cli

# What ``cli.main`` does before it runs the component.
cli.build_parser().parse_args([sys.argv[1]])
command = cli.COMMANDS[sys.argv[1]]
command.settings()
command.runner()
found = {}
for module in list(sys.modules.values()):
    for value in list(vars(module).values()):
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                found[family.name] = module.__name__
print(json.dumps(found))
"""

_HELP = """
import contextlib, json, sys
from dra_driver import cli

with contextlib.redirect_stdout(None), contextlib.suppress(SystemExit):
    cli.main(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("kubernetes", "aiohttp"))))
"""


def _run(script: str, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def series(command: str) -> dict[str, str]:
    """Metric family name → defining module, of everything ``command`` loads to run."""
    found = _run(_SERIES, command)
    assert isinstance(found, dict)
    return {str(k): str(v) for k, v in found.items()}


def owner(module: str) -> str | None:
    """The component that alone runs ``module``, or None for shared modules."""
    for command, package in OWNERS.items():
        if module == package or module.startswith(package + "."):
            return command
    return None


def loaded_for_help(*args: str) -> list[str]:
    """Modules of ``kubernetes`` and ``aiohttp`` that ``gvirtus-dra <args>`` loaded."""
    found = _run(_HELP, *args)
    assert isinstance(found, list)
    return [str(m) for m in found]
