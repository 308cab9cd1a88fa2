"""The project's Kubernetes client: the official asyncio client behind a few verbs.

Why an adapter at all: it is the one place that knows how to connect (kubeconfig or
in-cluster service account), that maps library exceptions onto
:mod:`dra_driver.kube.errors`, and that every component and test can point at
another API server. Components name what they touch with the
:mod:`~dra_driver.kube.resources` table and a verb (``get``, ``list``, ``watch``,
``create``, ``replace``, ``patch``, ``apply``, ``delete``); no component spells a
URL or touches the library.

Each verb builds its path from the resource table and sends the request through the
library's ``ApiClient`` (its configuration, authentication, TLS, proxy and pool),
and answers come back as plain JSON exactly as the server sent them, bodies going
out exactly as built (what a component compares with what it built). The library's
typed API methods are not used: each API class loads its module and models on first
use (``CoreV1Api`` alone about 0.7 s and 24 MB), and each call validates its
arguments and converts a body into the library's models and back, which measured
as two thirds of the controller's CPU when it publishes a thousand pools. The
``ApiClient`` calls sit here and nowhere else, so a change between library releases
is met in this module alone.

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
from typing import Any, Literal

from dra_driver import __version__
from dra_driver.kube import errors
from dra_driver.kube.config import load_configuration
from dra_driver.kube.resources import Resource

DEFAULT_TIMEOUT = 10.0
"""Seconds for one ordinary request; watches set their own."""

APPLY = "application/apply-patch+yaml"
PATCHES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}

Obj = dict[str, Any]


class KubeClient:
    """Verbs on the API objects of :mod:`dra_driver.kube.resources`, as plain JSON.

    One instance per process; it owns a connection pool and must be closed.
    """

    def __init__(self, api_client: Any, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.api_client = api_client
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, *, kubeconfig: pathlib.Path | None, component: str, timeout: float = DEFAULT_TIMEOUT
    ) -> KubeClient:
        """Connect with ``kubeconfig`` if given, else with the pod's service account.

        Raises:
            KubeError: neither a usable kubeconfig nor an in-cluster environment; one
                line naming the file (or the service account) and the problem.
        """
        library = await asyncio.to_thread(_library)
        configuration = await load_configuration(kubeconfig=kubeconfig)
        _settle_proxy(configuration)
        api_client = library.ApiClient(configuration)
        api_client.user_agent = f"gvirtus-dra/{__version__} ({component}; pid {os.getpid()})"
        return cls(api_client, timeout=timeout)

    async def close(self) -> None:
        """Release the connection pool.

        TLS connections finish closing on later turns of the event loop; the short
        pause lets them, so nothing is left half-closed when the loop ends.
        """
        await self.api_client.close()
        await asyncio.sleep(0.05)

    # -- verbs ------------------------------------------------------------------------

    async def get(
        self, resource: Resource, name: str, *, namespace: str | None = None, cached: bool = False
    ) -> Obj:
        """One object; with ``cached``, as the API server's watch cache holds it.

        A cached read (``resourceVersion=0``) costs the server no etcd read and never
        waits for writes being persisted, but may be a moment old: callers check what
        they got and read again without ``cached`` when it is not enough.

        Raises:
            NotFoundError: it does not exist; other :class:`KubeError` as answered.
        """
        query = {"resourceVersion": "0"} if cached else {}
        return await self._json("GET", _path(resource, namespace, name), query=query)

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        """A whole list (``items``, ``metadata.resourceVersion``); all namespaces if None."""
        query = {"labelSelector": label_selector, "fieldSelector": field_selector}
        return await self._json("GET", _path(resource, namespace), query=query)

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        timeout_seconds: int,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[Obj]:
        """The events of one watch stream from ``resource_version``, bookmarks included.

        An ``ERROR`` event is raised as the matching :class:`KubeError` (410 Gone as
        :class:`GoneError`); the stream ends when the server closes it.
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        async with translate_errors():
            response = await self._send(
                "GET",
                _path(resource, namespace),
                query=query,
                timeout=float(timeout_seconds + 30),
            )
            try:
                if not 200 <= response.status < 300:
                    raise errors.from_status(status=response.status, body=await response.read())
                while line := await response.content.readline():
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
                response.close()

    async def create(
        self,
        resource: Resource,
        body: Obj,
        *,
        namespace: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> Obj:
        """Create ``body``; with ``dry_run`` the server answers what it would store.

        Raises:
            AlreadyExistsError: the name is taken; other :class:`KubeError` as answered.
        """
        query = {"dryRun": "All" if dry_run else None, "fieldManager": field_manager}
        return await self._json("POST", _path(resource, namespace), query=query, body=body)

    async def replace(self, resource: Resource, body: Obj) -> Obj:
        """Replace an object with ``body``, conditional on its ``resourceVersion``.

        Raises:
            ConflictError: the object changed since that version.
        """
        meta = body["metadata"]
        path = _path(resource, meta.get("namespace"), meta["name"])
        return await self._json("PUT", path, body=body)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        kind: Literal["merge", "json", "strategic"],
        namespace: str | None = None,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> Obj:
        """Patch an object (a JSON merge, JSON or strategic merge patch).

        A JSON patch must be a list: the library would send anything else as a
        strategic merge patch under the wrong content type.
        """
        if kind == "json" and not isinstance(patch, list):
            raise TypeError(f"a JSON patch is a list of operations, not {type(patch).__name__}")
        return await self._json(
            "PATCH",
            _path(resource, namespace, name, subresource),
            query={"fieldManager": field_manager},
            body=patch,
            content_type=PATCHES[kind],
        )

    async def apply(
        self,
        resource: Resource,
        body: Obj,
        *,
        field_manager: str,
        subresource: str | None = None,
        force: bool = True,
    ) -> Obj:
        """Server-side apply ``body`` (which names the object) as ``field_manager``."""
        meta = body["metadata"]
        return await self._json(
            "PATCH",
            _path(resource, meta.get("namespace"), meta["name"], subresource),
            query={"fieldManager": field_manager, "force": "true" if force else None},
            body=body,
            content_type=APPLY,
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Mapping[str, str] | None = None,
    ) -> Obj:
        """Delete an object, only while it still has ``preconditions`` (uid, resourceVersion).

        Raises:
            NotFoundError: it is gone already; ConflictError: a precondition failed.
        """
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if preconditions:
            options["preconditions"] = dict(preconditions)
        return await self._json("DELETE", _path(resource, namespace, name), body=options)

    # -- plumbing -----------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One request; the answer's JSON object, or the matching :class:`KubeError`."""
        async with translate_errors():
            response = await self._send(
                method, path, query=query, body=body, content_type=content_type
            )
            try:
                raw = await response.read()
            finally:
                response.release()
        if not 200 <= response.status < 300:
            raise errors.from_status(status=response.status, body=raw)
        parsed = json.loads(raw) if raw else {}
        if not isinstance(parsed, dict):
            raise errors.KubeError("the API server answered with no JSON object", status=200)
        return parsed

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        """Send through the library's ``ApiClient``; the raw aiohttp response."""
        request = await self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None] or None,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        answer = await self.api_client.call_api(*request, _request_timeout=timeout or self.timeout)
        return answer.response


def _path(
    resource: Resource,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The URL path of a collection or an object, from the resource table."""
    if namespace is not None and not resource.namespaced:
        raise ValueError(f"{resource} is cluster-scoped; no namespace applies")
    if namespace is None and resource.namespaced and name is not None:
        raise ValueError(f"{resource} is namespaced; name the namespace of {name!r}")
    path = _base(resource)
    if namespace is not None:
        path += f"/namespaces/{_segment(namespace)}"
    path += f"/{resource.plural}"
    if name is not None:
        path += f"/{_segment(name)}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


def _base(resource: Resource) -> str:
    """The URL path a resource's API group is served under."""
    if resource.group:
        return f"/apis/{resource.group}/{resource.version}"
    return f"/api/{resource.version}"


def _segment(value: str) -> str:
    """``value`` as one URL path segment (names never contain a slash; be sure)."""
    return urllib.parse.quote(value, safe="")


def _library() -> Any:
    """``kubernetes.aio.client``, imported on first use (see the module docstring)."""
    from kubernetes.aio import client

    return client


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
    import pydantic

    try:
        yield
    except _library().ApiException as exc:
        if exc.status:
            raise errors.from_status(
                status=exc.status, body=exc.body, fallback=str(exc.reason or "")
            ) from exc
        raise errors.TransportError(str(exc.reason or exc), reason="Transport") from exc
    except pydantic.ValidationError as exc:
        raise errors.InvalidError(
            f"the client library refused the request: {exc.errors()[0]['msg']} at "
            + ".".join(str(p) for p in exc.errors()[0]["loc"]),
            reason="Invalid",
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
        detail = str(exc) or type(exc).__name__
        raise errors.TransportError(
            f"API server unreachable: {detail}", reason="Transport"
        ) from exc
