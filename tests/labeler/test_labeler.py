"""The labeler gives nodes the GVirtuS labels they lack, and touches nothing else."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dra_driver.kube.client import KubeClient
from labeler.labels import Labeler
from tests.support import objects
from tests.support.apiserver import APIServer
from tests.support.processes import ComponentProcess, free_port

FRONTEND, BACKEND = "gvirtus.io/frontend.allowed", "gvirtus.io/backend.allowed"


def bare_node(name: str, **labels: str) -> dict[str, Any]:
    node = objects.node(name=name, frontend=False)
    node["metadata"]["labels"] = {"kubernetes.io/hostname": name, **labels}
    return node


def gvirtus_labels(apiserver: APIServer, name: str) -> dict[str, str]:
    node = apiserver.get("nodes", name)
    assert node is not None
    labels = node["metadata"].get("labels") or {}
    return {k: v for k, v in labels.items() if k.startswith("gvirtus.io/")}


def node_patches(apiserver: APIServer) -> list[str]:
    return [r.path for r in apiserver.writes() if r.path.startswith("/api/v1/nodes")]


async def eventually(check: Callable[[], bool], *, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@pytest.fixture
async def labeler(
    apiserver: APIServer, kubeconfig: pathlib.Path, short_tmp: pathlib.Path
) -> AsyncIterator[Callable[[], Awaitable[ComponentProcess]]]:
    """Starts the labeler process (after the test's first nodes exist)."""
    started: list[ComponentProcess] = []

    async def start() -> ComponentProcess:
        port = free_port()
        process = ComponentProcess(
            command="labeler",
            root=short_tmp,
            kubeconfig=kubeconfig,
            args=("--metrics-port", str(port), "--metrics-address", "127.0.0.1"),
        )
        started.append(process)
        await process.wait_ready(f"http://127.0.0.1:{port}/readyz")
        return process

    yield start
    for process in started:
        process.terminate()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param({}, {FRONTEND: "true", BACKEND: "false"}, id="unlabelled"),
        pytest.param(
            {FRONTEND: "false"}, {FRONTEND: "false", BACKEND: "false"}, id="admin-said-no-frontend"
        ),
        pytest.param(
            {BACKEND: "true"}, {FRONTEND: "true", BACKEND: "true"}, id="admin-made-a-backend"
        ),
        pytest.param({FRONTEND: "maybe"}, {FRONTEND: "maybe", BACKEND: "false"}, id="odd-value"),
    ],
)
async def test_existing_nodes_get_only_the_labels_they_lack(
    apiserver: APIServer, labeler: Any, labels: dict[str, str], expected: dict[str, str]
) -> None:
    apiserver.put(bare_node("worker-1", **labels))

    await labeler()

    await eventually(lambda: gvirtus_labels(apiserver, "worker-1") == expected)
    node = apiserver.get("nodes", "worker-1")
    assert node is not None
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "worker-1"


async def test_a_new_node_is_labelled_as_it_joins(apiserver: APIServer, labeler: Any) -> None:
    await labeler()

    apiserver.put(bare_node("late-joiner"))

    await eventually(
        lambda: gvirtus_labels(apiserver, "late-joiner") == {FRONTEND: "true", BACKEND: "false"},
        timeout=5,
    )


async def test_a_node_with_both_labels_costs_no_write(apiserver: APIServer, labeler: Any) -> None:
    apiserver.put(bare_node("done", **{FRONTEND: "false", BACKEND: "true"}))
    apiserver.put(bare_node("todo"))

    await labeler()
    await eventually(lambda: BACKEND in gvirtus_labels(apiserver, "todo"))
    await asyncio.sleep(0.5)

    assert node_patches(apiserver) == ["/api/v1/nodes/todo"]
    assert gvirtus_labels(apiserver, "done") == {FRONTEND: "false", BACKEND: "true"}


async def test_an_admin_label_set_while_the_labeler_read_the_node_wins(
    apiserver: APIServer, kubeconfig: pathlib.Path
) -> None:
    apiserver.put(bare_node("racy"))
    seen = apiserver.get("nodes", "racy")
    assert seen is not None
    changed = bare_node("racy", **{FRONTEND: "false"})
    apiserver.put(changed)
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        await Labeler(kube=kube).label(seen)
    finally:
        await kube.close()

    assert gvirtus_labels(apiserver, "racy") == {FRONTEND: "false"}


async def test_labels_are_patched_with_the_labelers_field_manager(
    apiserver: APIServer, labeler: Any
) -> None:
    apiserver.put(bare_node("worker-1"))

    await labeler()
    await eventually(lambda: bool(node_patches(apiserver)))

    patch = next(r for r in apiserver.writes() if r.path == "/api/v1/nodes/worker-1")
    assert patch.method == "PATCH"
    assert patch.query.get("fieldManager") == "gvirtus-dra-labeler"


def test_the_labeler_does_not_load_the_webhook() -> None:
    """The two components share nothing but the core."""
    probe = (
        "import sys, labeler.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'webhook'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"
