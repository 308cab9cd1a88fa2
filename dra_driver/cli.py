"""The ``gvirtus-dra`` command: one subcommand per component.

Entry points stay thin: parse and validate settings, configure logging, run the
component. Exit status 2 means the settings were invalid (nothing was started),
1 that the component failed; 0 a clean stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from dra_driver import __version__, logs
from dra_driver.config import ConfigError, Settings, add_flags, load
from dra_driver.errors import StartupError
from dra_driver.kube.errors import KubeError

log = logging.getLogger("gvirtus_dra")


def _kubelet_plugin() -> tuple[type[Settings], Callable[[Any], Coroutine[Any, Any, None]]]:
    from dra_driver.plugin.app import run
    from dra_driver.plugin.settings import PluginSettings

    return PluginSettings, run


def _backend_agent() -> tuple[type[Settings], Callable[[Any], Coroutine[Any, Any, None]]]:
    from backend.app import run
    from backend.settings import AgentSettings

    return AgentSettings, run


def _controller() -> tuple[type[Settings], Callable[[Any], Coroutine[Any, Any, None]]]:
    from dra_driver.controller.app import run
    from dra_driver.controller.settings import ControllerSettings

    return ControllerSettings, run


def _webhook() -> tuple[type[Settings], Callable[[Any], Coroutine[Any, Any, None]]]:
    from webhook.app import run
    from webhook.settings import WebhookSettings

    return WebhookSettings, run


def _labeler() -> tuple[type[Settings], Callable[[Any], Coroutine[Any, Any, None]]]:
    from labeler.app import run
    from labeler.settings import LabelerSettings

    return LabelerSettings, run


COMMANDS: dict[
    str, tuple[str, Callable[[], tuple[type[Settings], Callable[[Any], Coroutine[Any, Any, None]]]]]
] = {
    "kubelet-plugin": ("serve DRA claims to the kubelet on this node", _kubelet_plugin),
    "backend-agent": ("run and report GVirtuS backends on this GPU node", _backend_agent),
    "controller": ("publish GVirtuS backends as ResourceSlices (one active replica)", _controller),
    "webhook": ("convert pods asking for nvidia.com/gpu into GVirtuS DRA claims", _webhook),
    "labeler": ("give every node the default GVirtuS labels", _labeler),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser (and its flags) per component."""
    parser = argparse.ArgumentParser(
        prog="gvirtus-dra", description="Kubernetes DRA driver for remote GPUs served by GVirtuS."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, factory) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        add_flags(sub, factory()[0])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one component; returns the process exit status."""
    args = build_parser().parse_args(argv)
    model, run = COMMANDS[args.command][1]()
    try:
        settings = load(model, args=args)
    except ConfigError as exc:
        print(f"gvirtus-dra {args.command}: {exc}", file=sys.stderr)
        return 2
    logs.configure(fmt=settings.log_format, level=settings.log_level)
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
