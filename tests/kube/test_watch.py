"""list_watch keeps a consumer in sync across dropped streams, 410 Gone and outages."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dra_driver.backoff import Backoff
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import RESOURCE_SLICES
from dra_driver.kube.watch import WatchEvent, list_watch
from tests.support import objects
from tests.support.apiserver import APIServer


class Recorder:
    def __init__(self) -> None:
        self.relists: list[list[str]] = []
        self.events: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    async def on_relist(self, items: list[Any]) -> None:
        self.relists.append(sorted(i["metadata"]["name"] for i in items))
        self.changed.set()

    async def on_event(self, event: WatchEvent) -> None:
        self.events.append((event.type, event.obj["metadata"]["name"]))
        self.changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def kube(kubeconfig: pathlib.Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    yield client
    await client.close()


def slice_named(pool: str) -> dict[str, Any]:
    return objects.backend_slice(pool=pool, devices=[objects.Device("gpu-0")])


async def run(kube: KubeClient, recorder: Recorder, **kwargs: Any) -> asyncio.Task[None]:
    return asyncio.create_task(
        list_watch(
            kube=kube,
            resource=RESOURCE_SLICES,
            consumer=recorder,
            component="test",
            backoff=Backoff(initial=0.01, maximum=0.05, jitter=True),
            **kwargs,
        )
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_lists_then_streams_changes(apiserver: APIServer, kube: KubeClient) -> None:
    apiserver.put(slice_named("a"))
    recorder = Recorder()
    task = await run(kube, recorder)
    try:
        await recorder.until(lambda: recorder.relists == [["gpu.gvirtus.io-a-0"]])
        apiserver.put(slice_named("b"))
        apiserver.remove("resourceslices", "gpu.gvirtus.io-a-0")
        await recorder.until(lambda: len(recorder.events) == 2)
    finally:
        await stop(task)
    assert recorder.events == [("ADDED", "gpu.gvirtus.io-b-0"), ("DELETED", "gpu.gvirtus.io-a-0")]


async def test_dropped_stream_resumes_without_relisting_or_losing_events(
    apiserver: APIServer, kube: KubeClient
) -> None:
    recorder = Recorder()
    task = await run(kube, recorder)
    try:
        await recorder.until(lambda: len(recorder.relists) == 1)
        await asyncio.sleep(0.1)
        apiserver.drop_watches()
        apiserver.put(slice_named("while-dropped"))
        await recorder.until(lambda: len(recorder.events) == 1)
    finally:
        await stop(task)
    assert recorder.events == [("ADDED", "gpu.gvirtus.io-while-dropped-0")]
    assert len(recorder.relists) == 1


async def test_gone_resource_version_relists_and_catches_up(
    apiserver: APIServer, kube: KubeClient
) -> None:
    recorder = Recorder()
    task = await run(kube, recorder)
    try:
        await recorder.until(lambda: len(recorder.relists) == 1)
        await asyncio.sleep(0.1)
        apiserver.drop_watches()
        apiserver.put(slice_named("missed"))
        apiserver.compact()
        await recorder.until(lambda: len(recorder.relists) >= 2)
    finally:
        await stop(task)
    assert recorder.relists[-1] == ["gpu.gvirtus.io-missed-0"]


async def test_failing_list_is_retried_with_backoff(apiserver: APIServer, kube: KubeClient) -> None:
    apiserver.put(slice_named("a"))
    apiserver.fail_next("GET", "/resourceslices$", code=500, times=3)
    recorder = Recorder()
    task = await run(kube, recorder)
    try:
        await recorder.until(lambda: len(recorder.relists) == 1)
    finally:
        await stop(task)
    failed = [r for r in apiserver.requests if r.path.endswith("/resourceslices")]
    assert len(failed) >= 4
    assert recorder.relists == [["gpu.gvirtus.io-a-0"]]


async def test_field_selector_reaches_list_and_watch(
    apiserver: APIServer, kube: KubeClient
) -> None:
    other = slice_named("other")
    other["spec"]["driver"] = "other.example.com"
    apiserver.put(other)
    recorder = Recorder()
    task = await run(kube, recorder, field_selector="spec.driver=gpu.gvirtus.io")
    try:
        await recorder.until(lambda: len(recorder.relists) == 1)
        apiserver.put({**other, "metadata": {"name": "other-2"}})
        apiserver.put(slice_named("mine"))
        await recorder.until(lambda: len(recorder.events) == 1)
    finally:
        await stop(task)
    assert recorder.relists == [[]]
    assert recorder.events == [("ADDED", "gpu.gvirtus.io-mine-0")]
    queries = [
        r.query.get("fieldSelector") for r in apiserver.requests if "resourceslices" in r.path
    ]
    assert set(queries) == {"spec.driver=gpu.gvirtus.io"}
