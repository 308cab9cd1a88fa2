"""The webhook as a real process behind real TLS, with the test API server.

The API server holds the MutatingWebhookConfiguration from ``manifests/base/webhook.yaml``
and resolves its Service to the process's port, so a pod POSTed to it goes through
the webhook exactly as in a cluster; tests can also post AdmissionReviews directly.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from tests.support import manifests
from tests.support.apiserver import APIServer
from tests.support.processes import WebhookProcess

NAMESPACE = "gvirtus-system"
SERVICE = "gvirtus-dra-webhook"
SECRET = "gvirtus-dra-webhook-tls"
CONFIGURATION = "gvirtus-dra-webhook"
SERVER_NAME = f"{SERVICE}.{NAMESPACE}.svc"


class Webhook:
    """One webhook process and a keep-alive HTTPS client for it."""

    def __init__(
        self, *, apiserver: APIServer, root: pathlib.Path, kubeconfig: pathlib.Path
    ) -> None:
        self.apiserver = apiserver
        self.root = root
        self.kubeconfig = kubeconfig
        self.process: WebhookProcess | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, *extra: str) -> Webhook:
        self.process = WebhookProcess(
            root=self.root, kubeconfig=self.kubeconfig, args=("--reload-interval", "1", *extra)
        )
        await self.process.ready()
        self.apiserver.admission.services[(NAMESPACE, SERVICE, 443)] = self.port
        return self

    @property
    def port(self) -> int:
        assert self.process is not None
        return self.process.port

    @property
    def metrics_port(self) -> int:
        assert self.process is not None
        return self.process.metrics_port

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()

    def ca_pem(self) -> bytes:
        """The CA the webhook keeps in its Secret."""
        secret = self.apiserver.get("secrets", SECRET, NAMESPACE)
        assert secret is not None, "the webhook did not create its Secret"
        return base64.b64decode(secret["data"]["ca.crt"])

    def ssl_context(self, ca_pem: bytes | None = None) -> ssl.SSLContext:
        """Trusting only the webhook's CA, as the API server does with the caBundle."""
        return ssl.create_default_context(cadata=(ca_pem or self.ca_pem()).decode())

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate?timeout=5s"

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def post(
        self, body: bytes | dict[str, Any], *, context: ssl.SSLContext | None = None
    ) -> tuple[int, Any]:
        """POST to ``/mutate``; the status and the JSON answer (or text, when not JSON)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        session = await self.session()
        async with session.post(
            self.url,
            data=io.BytesIO(data),
            headers={"Content-Type": "application/json"},
            ssl=context or self.ssl_context(),
            server_hostname=SERVER_NAME,
        ) as response:
            raw = await response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw.decode(errors="replace")

    async def metrics(self) -> str:
        session = await self.session()
        async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
            return await response.text()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def configuration() -> dict[str, Any]:
    """The MutatingWebhookConfiguration as installed (no caBundle yet)."""
    return manifests.find("manifests/base/webhook.yaml", "MutatingWebhookConfiguration")


@pytest.fixture
async def make_webhook(
    apiserver: APIServer, kubeconfig: pathlib.Path, short_tmp: pathlib.Path
) -> AsyncIterator[Callable[..., Coroutine[Any, Any, Webhook]]]:
    """Starts webhook processes (flags as arguments); stops them after the test."""
    started: list[Webhook] = []

    async def make(*extra: str) -> Webhook:
        webhook = Webhook(apiserver=apiserver, root=short_tmp, kubeconfig=kubeconfig)
        started.append(webhook)
        return await webhook.start(*extra)

    yield make
    for webhook in started:
        await webhook.close()
        webhook.stop()


@pytest.fixture
async def webhook(
    apiserver: APIServer, make_webhook: Callable[..., Coroutine[Any, Any, Webhook]]
) -> Webhook:
    """A started webhook whose configuration is installed in the API server."""
    apiserver.put(configuration())
    return await make_webhook()
