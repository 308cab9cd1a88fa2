"""Loading API credentials, with one clear line when they are unusable.

The client library's loaders report a missing kubeconfig as "Expected key
current-context", a malformed one as a YAML parser traceback, and a file that is not
a mapping as a ``TypeError``. A newcomer needs the file and the problem instead, so
the file is checked here first and every failure becomes one :class:`KubeError`.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from dra_driver.kube import errors


async def load_configuration(*, kubeconfig: pathlib.Path | None) -> Any:
    """A client ``Configuration`` from ``kubeconfig``, or from the pod's service account.

    Raises:
        KubeError: naming the kubeconfig (or the service account) and what is wrong.
    """
    from kubernetes.aio import client
    from kubernetes.aio import config as loaders

    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            loaders.load_incluster_config(client_configuration=configuration)
        except (loaders.ConfigException, OSError, ValueError) as exc:
            raise errors.KubeError(
                f"cannot load API credentials from the in-cluster service account: {exc} "
                "(outside a pod, pass --kubeconfig or set KUBECONFIG)"
            ) from exc
        return configuration
    await asyncio.to_thread(check_kubeconfig, kubeconfig)
    try:
        await loaders.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
    except Exception as exc:  # the loader raises whatever its parsing hits
        raise unusable(kubeconfig, _first_line(exc)) from exc
    return configuration


def check_kubeconfig(path: pathlib.Path) -> None:
    """Refuse a kubeconfig that cannot work, saying why in one line.

    Raises:
        KubeError: the file is missing, unreadable, not YAML, or names no context.
    """
    import yaml

    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise unusable(path, "no such file") from exc
    except IsADirectoryError as exc:
        raise unusable(path, "is a directory, not a file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise unusable(path, f"cannot be read: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise unusable(
            path, "not valid YAML" + (f" at line {where.line + 1}" if where is not None else "")
        ) from exc
    if not isinstance(document, dict):
        raise unusable(path, "not a kubeconfig (expected a mapping)")
    if not document.get("current-context"):
        raise unusable(path, "names no current-context (set one: kubectl config use-context)")


def unusable(path: pathlib.Path, problem: str) -> errors.KubeError:
    """The one-line error for a kubeconfig that cannot be used."""
    return errors.KubeError(f"cannot load API credentials from kubeconfig {path}: {problem}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
