"""Hostile clients: thousands of connections that say nothing, or say it slowly.

Every test runs the webhook as a process behind real TLS and holds real sockets
from loopback addresses of its own (127.0.1.x), apart from the API server's
127.0.0.1. Tests wait for what the webhook reports (its metrics, a closed socket),
never for a length of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pydantic
import pytest

from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import PODS
from tests.support import objects
from tests.support.apiserver import APIServer
from tests.webhook import hostile
from tests.webhook.conftest import Webhook, configuration
from webhook.settings import WebhookSettings

CAP = 200
PER_ADDRESS = 100
TIMEOUT = 2.0
IDLE = 3.0
MakeWebhook = Callable[..., Coroutine[Any, Any, Webhook]]


@pytest.fixture
async def guarded(apiserver: APIServer, make_webhook: MakeWebhook) -> Webhook:
    """A webhook with a small cap and short deadlines, configured in the API server."""
    hostile.raise_file_limit(6000)
    apiserver.put(configuration())
    return await make_webhook(
        "--max-connections",
        str(CAP),
        "--max-connections-per-address",
        str(PER_ADDRESS),
        "--request-timeout",
        str(TIMEOUT),
        "--idle-timeout",
        str(IDLE),
    )


@pytest.fixture
async def kube(kubeconfig: pathlib.Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    yield client
    await client.close()


async def metric(webhook: Webhook, name: str) -> float:
    """One sample of the webhook's metrics (0 when absent)."""
    for line in (await webhook.metrics()).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def until(check: Callable[[], Awaitable[bool]], *, within: float = 60) -> None:
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.1)


def open_files(webhook: Webhook) -> int:
    assert webhook.process is not None
    return len(os.listdir(f"/proc/{webhook.process.proc.pid}/fd"))


@contextlib.asynccontextmanager
async def holding(
    webhook: Webhook, *, count: int, addresses: int, kinds: tuple[str, ...]
) -> AsyncIterator[hostile.Tally]:
    """``count`` holders spread over ``addresses`` source addresses, stopped on exit."""
    stop, tally = asyncio.Event(), hostile.Tally()
    context = webhook.ssl_context()
    per_address = -(-count // addresses)
    holders = [
        asyncio.create_task(
            hostile.hold(
                port=webhook.port,
                context=context,
                source=hostile.loopback(i // per_address),
                kind=kinds[i % len(kinds)],
                stop=stop,
                tally=tally,
            )
        )
        for i in range(count)
    ]
    try:
        yield tally
    finally:
        stop.set()
        await asyncio.gather(*holders)


def legacy_pod() -> dict[str, Any]:
    pod = objects.legacy_pod(containers={"app": 2})
    pod["metadata"]["name"] = None
    pod["metadata"]["generateName"] = "legacy-"
    pod["metadata"].pop("namespace", None)
    return pod


async def test_2000_connections_from_one_pod_keep_no_review_out(
    guarded: Webhook, apiserver: APIServer, kube: KubeClient
) -> None:
    """A hostile pod holds 2,000 idle and slow connections: it gets its share, no more."""
    stop, statuses = asyncio.Event(), []
    kept_alive = asyncio.create_task(_review_steadily(guarded, stop=stop, statuses=statuses))
    await until(lambda: _any(statuses))

    async with holding(guarded, count=2000, addresses=1, kinds=("tcp", "tls", "slow")) as tally:
        refused = 'gvirtus_dra_webhook_connections_refused_total{limit="max_per_address"}'
        await until(lambda: _above(guarded, refused, 1000))
        most_files = open_files(guarded)
        created = [
            await kube.create(PODS, legacy_pod(), namespace="gvirtus-demo") for _ in range(5)
        ]
        most_files = max(most_files, open_files(guarded))
        assert tally.live <= PER_ADDRESS
    stop.set()
    await kept_alive

    assert [len(pod["spec"]["resourceClaims"]) for pod in created] == [1] * 5
    assert set(statuses) == {200}, "the API server's kept-alive connection was never refused"
    assert most_files < PER_ADDRESS + 50, "connections beyond the share never stay open"


async def test_2000_connections_from_many_pods_are_turned_away_at_the_cap(
    guarded: Webhook,
) -> None:
    """Pods together can fill the cap; memory stays bounded and kept-alive reviews flow."""
    stop, statuses = asyncio.Event(), []
    kept_alive = asyncio.create_task(_review_steadily(guarded, stop=stop, statuses=statuses))
    await until(lambda: _any(statuses))

    async with holding(guarded, count=2000, addresses=20, kinds=("tcp", "tls", "slow")) as tally:
        refused = 'gvirtus_dra_webhook_connections_refused_total{limit="max_connections"}'
        await until(lambda: _above(guarded, refused, 1000))
        most_files = open_files(guarded)
        during = len(statuses)
        await until(lambda: _any(statuses[during + 10 :]))
        most_files = max(most_files, open_files(guarded))
        assert tally.refused > 1000
    stop.set()
    await kept_alive

    assert set(statuses) == {200}, "the API server's kept-alive connection was never refused"
    assert most_files < CAP + 50, "connections beyond the cap never stay open"
    await until(lambda: _equals(guarded, "gvirtus_dra_webhook_connections", 0))


async def _review_steadily(webhook: Webhook, *, stop: asyncio.Event, statuses: list[int]) -> None:
    """What the API server does: reviews over one connection it keeps alive."""
    reader, writer = await hostile.connect_tls(webhook.port, webhook.ssl_context())
    body = json.dumps(objects.admission_review()).encode()
    while not stop.is_set():
        statuses.append((await hostile.review_once(reader, writer, body))[0])
        await asyncio.sleep(0.2)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _any(items: list[int]) -> bool:
    return bool(items)


async def _positive(webhook: Webhook, *names: str) -> bool:
    return all([await metric(webhook, name) > 0 for name in names])


async def _above(webhook: Webhook, name: str, value: float) -> bool:
    return await metric(webhook, name) > value


async def _equals(webhook: Webhook, name: str, value: float) -> bool:
    return await metric(webhook, name) == value


async def test_one_address_gets_no_more_than_its_share(guarded: Webhook) -> None:
    async with holding(guarded, count=PER_ADDRESS + 100, addresses=1, kinds=("tls",)):
        name = 'gvirtus_dra_webhook_connections_refused_total{limit="max_per_address"}'
        await until(lambda: _positive(guarded, name))

        status, answer = await guarded.post(objects.admission_review())

    assert status == 200 and answer["response"]["allowed"]


async def test_connections_that_all_asked_something_are_turned_away_at_the_cap(
    apiserver: APIServer, make_webhook: MakeWebhook
) -> None:
    apiserver.put(configuration())
    webhook = await make_webhook("--max-connections", "4", "--max-connections-per-address", "4")
    context, body = webhook.ssl_context(), json.dumps(objects.admission_review()).encode()
    kept = [
        await hostile.connect_tls(webhook.port, context, source=hostile.loopback(i))
        for i in range(4)
    ]
    for reader, writer in kept:
        assert (await hostile.review_once(reader, writer, body))[0] == 200

    with pytest.raises(ConnectionResetError):  # reset at accept: no handshake
        await _review_on_a_new_connection(webhook, body, source=hostile.loopback(4))

    refused = 'gvirtus_dra_webhook_connections_refused_total{limit="max_connections"}'
    assert await metric(webhook, refused) >= 1
    for reader, writer in kept:
        assert (await hostile.review_once(reader, writer, body))[0] == 200, "the four carry on"
        writer.close()


async def _review_on_a_new_connection(webhook: Webhook, body: bytes, *, source: str) -> int:
    reader, writer = await hostile.connect_tls(webhook.port, webhook.ssl_context(), source=source)
    try:
        return (await hostile.review_once(reader, writer, body))[0]
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["tcp", "tls", "slow"])
async def test_a_connection_without_a_whole_request_is_closed_at_the_deadline(
    guarded: Webhook, kind: str
) -> None:
    async with holding(guarded, count=1, addresses=1, kinds=(kind,)) as tally:
        await until(lambda: _closed(tally))

    reason = 'gvirtus_dra_webhook_connections_dropped_total{reason="no_request"}'
    assert await metric(guarded, reason) >= 1


async def _closed(tally: hostile.Tally) -> bool:
    return tally.closed_by_server > 0


async def test_a_kept_alive_connection_is_closed_once_idle(guarded: Webhook) -> None:
    reader, writer = await hostile.connect_tls(guarded.port, guarded.ssl_context())
    body = json.dumps(objects.admission_review()).encode()
    assert (await hostile.review_once(reader, writer, body))[0] == 200

    async with asyncio.timeout(IDLE * 10):
        assert await reader.read() == b"", "the server closed it"
    writer.close()


async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closed(
    guarded: Webhook,
) -> None:
    reader, writer = await hostile.connect_tls(guarded.port, guarded.ssl_context())
    writer.write(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )

    async with asyncio.timeout(TIMEOUT * 10):
        answer = await reader.read()

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"the request body did not arrive within 2 s" in answer
    writer.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            {"max_connections": 4, "max_connections_per_address": 5},
            "--max-connections-per-address cannot exceed --max-connections",
            id="share-above-cap",
        ),
        pytest.param({"request_timeout": 0}, "greater than 0", id="no-deadline"),
        pytest.param({"max_connections": 0}, "greater than or equal to 1", id="no-connections"),
    ],
)
def test_connection_settings_that_cannot_work_are_refused(
    flags: dict[str, Any], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        WebhookSettings(**flags)
