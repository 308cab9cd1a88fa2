"""The project's Kubernetes client: the official asyncio client behind a few verbs.

Why an adapter at all: it is the one place that knows how to connect (kubeconfig or
in-cluster service account), that maps library exceptions onto
:mod:`dra_driver.kube.errors`, and that every component and test can point at
another API server. Components name what they touch with the
:mod:`~dra_driver.kube.resources` table and a verb (``get``, ``list``, ``watch``,
``create``, ``replace``, ``patch``, ``apply``, ``delete``); the verbs call the
library's public, typed API methods in their ``_without_preload_content`` form, so
answers come back as plain JSON exactly as the server sent them (what a component
compares with what it built), and no component spells a URL.

One exception: ``get`` builds its request from the resource table and sends it
through the library's ``ApiClient`` (the same plumbing, headers, authentication and
TLS the typed methods use), because the typed read methods cost more than the read:
each API class loads its module and models on first use (``CoreV1Api`` alone about
0.7 s and 24 MB, for a kubelet plugin that reads one Node), and each call validates
its arguments with pydantic.

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
from collections.abc import AsyncIterator, Callable, Mapping
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
        self._apis: dict[str, Any] = {}

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

    async def preload(self, *resources: Resource) -> None:
        """Load the library's API classes for ``resources`` in a worker thread.

        A class loads its module and models on first use; on an event loop that
        already serves, that would stall every other call for a fraction of a second.
        """
        await asyncio.to_thread(lambda: [self._api(r) for r in resources])

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
        _scope(resource, namespace)  # refuses a namespace for a cluster-scoped kind
        where = f"/namespaces/{_segment(namespace)}" if namespace is not None else ""
        path = f"{_base(resource)}{where}/{resource.plural}/{_segment(name)}"
        query = (("resourceVersion", "0"),) if cached else ()
        return await self._call(self._direct, path=path, query=query)

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Obj:
        """A whole list (``items``, ``metadata.resourceVersion``); all namespaces if None."""
        method = self._method(resource, "list", namespace=namespace)
        return await self._call(
            method,
            label_selector=label_selector,
            field_selector=field_selector,
            **_scope(resource, namespace),
        )

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
        method = self._method(resource, "list", namespace=namespace)
        async with translate_errors():
            response = await method(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                label_selector=label_selector,
                field_selector=field_selector,
                _request_timeout=float(timeout_seconds + 30),
                **_scope(resource, namespace),
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
        method = self._method(resource, "create", namespace=namespace)
        return await self._call(
            method,
            body=body,
            dry_run="All" if dry_run else None,
            field_manager=field_manager,
            **_scope(resource, namespace),
        )

    async def replace(self, resource: Resource, body: Obj) -> Obj:
        """Replace an object with ``body``, conditional on its ``resourceVersion``.

        Raises:
            ConflictError: the object changed since that version.
        """
        meta = body["metadata"]
        namespace = meta.get("namespace")
        method = self._method(resource, "replace", namespace=namespace)
        return await self._call(method, name=meta["name"], body=body, **_scope(resource, namespace))

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
        """Patch an object (a JSON merge, JSON or strategic merge patch)."""
        method = self._method(resource, "patch", namespace=namespace, subresource=subresource)
        return await self._call(
            method,
            name=name,
            body=patch,
            field_manager=field_manager,
            _content_type=PATCHES[kind],
            **_scope(resource, namespace),
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
        namespace = meta.get("namespace")
        method = self._method(resource, "patch", namespace=namespace, subresource=subresource)
        return await self._call(
            method,
            name=meta["name"],
            body=body,
            field_manager=field_manager,
            force=force,
            _content_type=APPLY,
            **_scope(resource, namespace),
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
        method = self._method(resource, "delete", namespace=namespace)
        options = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if preconditions:
            options["preconditions"] = dict(preconditions)  # type: ignore[assignment]
        return await self._call(method, name=name, body=options, **_scope(resource, namespace))

    # -- plumbing -----------------------------------------------------------------------

    def _method(
        self,
        resource: Resource,
        verb: str,
        *,
        namespace: str | None,
        subresource: str | None = None,
    ) -> Callable[..., Any]:
        """The library's method for ``verb`` on ``resource``, by its naming convention."""
        api = self._api(resource)
        name = resource.singular + (f"_{subresource}" if subresource else "")
        if resource.namespaced and namespace is not None:
            name = f"{verb}_namespaced_{name}"
        elif resource.namespaced:
            name = f"{verb}_{name}_for_all_namespaces"
        else:
            name = f"{verb}_{name}"
        method: Callable[..., Any] = getattr(api, f"{name}_without_preload_content")
        return method

    async def _direct(
        self, *, path: str, query: tuple[tuple[str, str], ...], _request_timeout: float
    ) -> Any:
        """GET ``path`` through the library's ``ApiClient``; the raw response."""
        request = await self.api_client.param_serialize(
            method="GET",
            resource_path=path,
            query_params=list(query),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        answer = await self.api_client.call_api(*request, _request_timeout=_request_timeout)
        return answer.response

    def _api(self, resource: Resource) -> Any:
        """The library's API object for ``resource`` (loaded on first use)."""
        api = self._apis.get(resource.api)
        if api is None:
            api = self._apis[resource.api] = getattr(_library(), resource.api)(self.api_client)
        return api

    async def _call(self, method: Callable[..., Any], **kwargs: Any) -> Obj:
        """Call, read the whole answer, and raise a :class:`KubeError` unless it is 2xx."""
        arguments = {k: v for k, v in kwargs.items() if v is not None}
        async with translate_errors():
            response = await method(**arguments, _request_timeout=self.timeout)
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


def _base(resource: Resource) -> str:
    """The URL path a resource's API group is served under."""
    if resource.group:
        return f"/apis/{resource.group}/{resource.version}"
    return f"/api/{resource.version}"


def _segment(value: str) -> str:
    """``value`` as one URL path segment (names never contain a slash; be sure)."""
    return urllib.parse.quote(value, safe="")


def _scope(resource: Resource, namespace: str | None) -> dict[str, str]:
    if namespace is not None and not resource.namespaced:
        raise ValueError(f"{resource} is cluster-scoped; no namespace applies")
    return {"namespace": namespace} if namespace is not None else {}


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
