"""A small adapter over the official asyncio client, shared by the components.

Why an adapter at all: it is the one place that knows how to connect (kubeconfig or
in-cluster service account), that maps library exceptions onto
:mod:`dra_driver.kube.errors`, that hides the generator's naming quirks (the v1
claim model is ``ResourceV1ResourceClaim``, not ``V1ResourceClaim``), and that every
component and test can point at another API server. Objects come back as the
library's typed (pydantic) models.

The library is imported when a client connects, never when this module is: importing
any part of ``kubernetes`` loads all of it (~0.45 s and ~45 MB), which a component
must be able to put after its own start-up, and which ``--help`` never needs.
:meth:`KubeClient.connect` imports it in a worker thread, so an event loop that
already serves (the kubelet plugin's sockets) keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from dra_driver import __version__
from dra_driver.kube import errors

if TYPE_CHECKING:
    from kubernetes.aio import client as k8s

DEFAULT_TIMEOUT = 10.0
"""Seconds for one ordinary request; watches set their own."""


class KubeClient:
    """Typed access to the API objects this project reads and writes.

    One instance per process; it owns a connection pool and must be closed.
    """

    def __init__(self, api_client: k8s.ApiClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.resource = _library().ResourceV1Api(api_client)
        self._core: Any = None

    @property
    def core(self) -> Any:
        """``CoreV1Api``, built on first use: its models alone cost ~25 MiB of memory."""
        if self._core is None:
            self._core = _library().CoreV1Api(self.api_client)
        return self._core

    @classmethod
    async def connect(
        cls, *, kubeconfig: pathlib.Path | None, component: str, timeout: float = DEFAULT_TIMEOUT
    ) -> KubeClient:
        """Connect with ``kubeconfig`` if given, else with the pod's service account.

        Raises:
            KubeError: neither a readable kubeconfig nor an in-cluster environment.
        """
        k8s = await asyncio.to_thread(_library)
        from kubernetes.aio import config as k8s_config

        configuration = k8s.Configuration()
        try:
            if kubeconfig is not None:
                await k8s_config.load_kube_config(
                    config_file=str(kubeconfig),
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                k8s_config.load_incluster_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
            hint = "" if kubeconfig else " (outside a pod, pass --kubeconfig or set KUBECONFIG)"
            raise errors.KubeError(
                f"cannot load API credentials from {where}: {exc}{hint}"
            ) from exc
        _settle_proxy(configuration)
        api_client = k8s.ApiClient(configuration)
        api_client.user_agent = f"gvirtus-dra/{__version__} ({component}; pid {os.getpid()})"
        return cls(api_client, timeout=timeout)

    async def close(self) -> None:
        """Release the connection pool.

        TLS connections finish closing on later turns of the event loop; the short
        pause lets them, so nothing is left half-closed when the loop ends.
        """
        await self.api_client.close()
        await asyncio.sleep(0.05)

    async def get_resource_claim(self, *, namespace: str, name: str) -> Any:
        """Read one ResourceClaim (``resource.k8s.io/v1``).

        Returns:
            ``kubernetes.aio.client.ResourceV1ResourceClaim``.
        """
        async with translate_errors():
            return await self.resource.read_namespaced_resource_claim(
                name=name, namespace=namespace, _request_timeout=self.timeout
            )

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One API call with a JSON answer, as plain dicts (``path`` starts at ``/api``).

        Plain JSON suits objects a component builds itself and compares with what the
        server stored (ResourceSlices, Leases, Events): what is sent is exactly what
        was built, and typed models need not be imported for a field or two.

        Raises:
            KubeError: the matching subclass for the server's answer or the failure.
        """
        async with translate_errors():
            response = await self._send(
                method, path, query=query, body=body, content_type=content_type, timeout=timeout
            )
            text = (await response.read()).decode()
            _raise_for_status(response, text)
            parsed = json.loads(text) if text else {}
        if not isinstance(parsed, dict):
            raise errors.KubeError(
                f"{method} {path}: expected a JSON object", status=response.status
            )
        return parsed

    async def watch(
        self, path: str, *, query: Mapping[str, str | int | None], timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch stream (``watch=1`` is added), as plain dicts.

        An ``ERROR`` event is raised as the matching :class:`KubeError` (410 Gone as
        :class:`GoneError`); the stream ends when the server closes it.
        """
        async with translate_errors():
            response = await self._send(
                "GET", path, query={**query, "watch": "1"}, timeout=timeout + 30
            )
            try:
                if not 200 <= response.status < 300:
                    _raise_for_status(response, (await response.read()).decode())
                while line := await response.response.content.readline():
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise errors.from_status(
                            status=int(status.get("code") or 500), body=json.dumps(status)
                        )
                    yield event
            finally:
                # Abandoning a stream mid-way: drop its connection now rather than
                # leaving a half-read TLS stream for the pool to discover.
                response.response.close()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        params = [(k, str(v)) for k, v in (query or {}).items() if v is not None]
        request = await self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params or None,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        return await self.api_client.call_api(*request, _request_timeout=timeout or self.timeout)


def _library() -> Any:
    """``kubernetes.aio.client``, imported on first use (see the module docstring)."""
    from kubernetes.aio import client

    return client


def _raise_for_status(response: Any, text: str) -> None:
    if not 200 <= response.status < 300:
        _library().ApiException.from_response(http_resp=response, body=text, data=None)


def _settle_proxy(configuration: Any) -> None:
    """Honour ``HTTPS_PROXY``/``NO_PROXY`` once, instead of on every request.

    aiohttp's ``trust_env`` looks both the proxy and ``~/.netrc`` up in a worker thread
    for each request, which doubles the cost of a claim read; the API server's proxy
    cannot change while the process runs, so it is decided here once.
    """
    configuration.client_session_kwargs = {"trust_env": False}
    url = urllib.parse.urlsplit(configuration.host)
    proxy = urllib.request.getproxies().get(url.scheme)
    if (
        configuration.proxy is None
        and proxy
        and not urllib.request.proxy_bypass(url.hostname or "")
    ):
        configuration.proxy = proxy


@contextlib.asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Re-raise the client library's and aiohttp's failures as :class:`KubeError`."""
    import aiohttp

    try:
        yield
    except _library().ApiException as exc:
        if exc.status:
            raise errors.from_status(
                status=exc.status, body=exc.body, fallback=str(exc.reason or "")
            ) from exc
        raise errors.TransportError(str(exc.reason or exc), reason="Transport") from exc
    except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
        detail = str(exc) or type(exc).__name__
        raise errors.TransportError(
            f"API server unreachable: {detail}", reason="Transport"
        ) from exc
