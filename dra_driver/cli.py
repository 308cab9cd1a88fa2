"""The ``gvirtus-dra`` command: one subcommand per component.

Entry points stay thin: parse and validate settings, configure logging, run the
component. Exit status 2 means the settings were invalid (nothing was started),
1 that the component failed; 0 a clean stop.

A process imports only the component it runs: its settings model when its flags are
parsed or shown, its ``run`` when it starts. Components keep their Prometheus
metrics in module-level objects of the default registry, so importing another
component's modules would put that component's series on this one's ``/metrics``;
and ``--help`` would pay for the ``kubernetes`` client it never uses.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dra_driver import __version__, logs
from dra_driver.config import ConfigError, Settings, add_flags, load
from dra_driver.errors import StartupError
from dra_driver.kube.errors import KubeError

log = logging.getLogger("gvirtus_dra")

Runner = Callable[[Any], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Command:
    """One component: its summary, and where its settings and ``run`` live."""

    summary: str
    settings_path: str
    """``module:attribute`` of the component's settings model."""
    run_path: str
    """``module:attribute`` of the component's ``async def run(settings)``."""

    def settings(self) -> type[Settings]:
        """The settings model (imports the settings module only)."""
        return cast(type[Settings], _resolve(self.settings_path))

    def runner(self) -> Runner:
        """The component's ``run`` (imports the component)."""
        return cast(Runner, _resolve(self.run_path))


def _resolve(path: str) -> object:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


COMMANDS: dict[str, Command] = {
    "kubelet-plugin": Command(
        "serve DRA claims to the kubelet on this node",
        "dra_driver.plugin.settings:PluginSettings",
        "dra_driver.plugin.app:run",
    ),
    "backend-agent": Command(
        "run and report GVirtuS backends on this GPU node",
        "backend.settings:AgentSettings",
        "backend.app:run",
    ),
    "controller": Command(
        "publish GVirtuS backends as ResourceSlices (one active replica)",
        "dra_driver.controller.settings:ControllerSettings",
        "dra_driver.controller.app:run",
    ),
    "webhook": Command(
        "convert pods asking for nvidia.com/gpu into GVirtuS DRA claims",
        "webhook.settings:WebhookSettings",
        "webhook.app:run",
    ),
    "labeler": Command(
        "give every node the default GVirtuS labels",
        "labeler.settings:LabelerSettings",
        "labeler.app:run",
    ),
}


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that declares its flags only when it is used.

    Declaring flags needs the settings model, hence its module; only the subcommand
    being run (or shown by ``--help``) should pay for that.
    """

    def __init__(self, *args: Any, settings: Callable[[], type[Settings]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings: Callable[[], type[Settings]] | None = settings

    def _declare_flags(self) -> None:
        if self._settings is not None:
            add_flags(self, self._settings())
            self._settings = None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Declare the flags, then parse; an unknown flag is this subcommand's error.

        Everything after the subcommand's name is its own, so a flag it does not know
        is reported with its usage, not the top-level one.
        """
        self._declare_flags()
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown

    def format_help(self) -> str:
        """Declare the flags, then render the help as usual."""
        self._declare_flags()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-parser per component, its flags declared on use."""
    parser = argparse.ArgumentParser(
        prog="gvirtus-dra", description="Kubernetes DRA driver for remote GPUs served by GVirtuS."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for name, command in COMMANDS.items():
        commands.add_parser(
            name, help=command.summary, description=command.summary, settings=command.settings
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one component; returns the process exit status."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        settings = load(command.settings(), args=args)
    except ConfigError as exc:
        print(f"gvirtus-dra {args.command}: {exc}", file=sys.stderr)
        return 2
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    run = command.runner()
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0
    except (StartupError, KubeError) as exc:
        log.error("%s cannot run: %s", args.command, exc)
        return 1
    except Exception:
        log.exception("%s failed", args.command)
        return 1
    return 0
