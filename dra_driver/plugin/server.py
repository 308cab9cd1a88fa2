"""The plugin's two unix-socket gRPC servers and their life cycle.

Order matters to the kubelet: the DRA service socket is listening before the
registration socket appears (the kubelet dials the endpoint right after
``GetInfo``), and on shutdown the registration socket goes first so the kubelet
stops routing calls here before the service stops. A stale socket file from an
earlier run is replaced; anything else at a socket path is refused, never deleted.
Each plugin removes only its own sockets: with per-pod names during a rolling update
the other pod's sockets stay untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from dra_driver.errors import StartupError
from dra_driver.kubeletapi.dra.v1 import api_pb2_grpc as v1_grpc
from dra_driver.kubeletapi.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from dra_driver.kubeletapi.dra_health.v1 import api_pb2_grpc as health_v1_grpc
from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2_grpc as health_v1alpha1_grpc
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from dra_driver.plugin import metrics

log = logging.getLogger(__name__)

_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class SocketError(StartupError):
    """A socket path is unusable (something other than a stale socket is there)."""


def clear_stale_socket(path: pathlib.Path) -> None:
    """Remove a leftover socket at ``path``; refuse to remove anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketError(
            f"{path} exists and is not a socket; remove it or choose other directories"
        )
    log.info("replacing stale socket %s", path)
    path.unlink()


class _MetricsInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Times every unary call by method and status code."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method
        inner = handler.unary_unary

        async def timed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                code = _code_name(context) or "UNKNOWN"
                raise
            finally:
                metrics.GRPC_SECONDS.labels(method, code).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_name(context: Any) -> str | None:
    try:
        code = context.code()
    except Exception:
        return None
    return getattr(code, "name", None) if code is not None else None


class PluginServer:
    """Owns the DRA service server and the registration server.

    The DRA socket serves every version a supported kubelet may call: DRA ``v1`` and
    ``v1beta1``, and health ``v1`` (1.37) and ``v1alpha1`` (1.35, 1.36).
    """

    def __init__(
        self,
        *,
        dra_socket: pathlib.Path,
        registration_socket: pathlib.Path,
        dra_v1: Any,
        dra_v1beta1: Any,
        health_v1: Any,
        health_v1alpha1: Any,
        registration: Any,
    ) -> None:
        self.dra_socket = dra_socket
        self.registration_socket = registration_socket
        self._services = (dra_v1, dra_v1beta1, health_v1, health_v1alpha1, registration)
        self._dra: aio.Server | None = None
        self._registration: aio.Server | None = None
        self._bound: list[pathlib.Path] = []

    async def start(self) -> None:
        """Serve the DRA socket, then announce it through the registration socket."""
        dra_v1, dra_v1beta1, health_v1, health_v1alpha1, registration = self._services
        self.dra_socket.parent.mkdir(parents=True, exist_ok=True)
        self.registration_socket.parent.mkdir(parents=True, exist_ok=True)

        self._dra = aio.server(interceptors=[_MetricsInterceptor()], options=_OPTIONS)
        v1_grpc.add_DRAPluginServicer_to_server(dra_v1, self._dra)
        v1beta1_grpc.add_DRAPluginServicer_to_server(dra_v1beta1, self._dra)
        health_v1_grpc.add_DRAResourceHealthServicer_to_server(health_v1, self._dra)
        health_v1alpha1_grpc.add_DRAResourceHealthServicer_to_server(health_v1alpha1, self._dra)
        await _listen(self._dra, self.dra_socket)
        self._bound.append(self.dra_socket)

        self._registration = aio.server(options=_OPTIONS)
        reg_grpc.add_RegistrationServicer_to_server(registration, self._registration)
        await _listen(self._registration, self.registration_socket)
        self._bound.append(self.registration_socket)
        log.info(
            "serving",
            extra={
                "dra_socket": str(self.dra_socket),
                "registration_socket": str(self.registration_socket),
            },
        )

    async def stop(self, *, grace: float = 5.0) -> None:
        """Withdraw the registration, let running calls finish, remove both sockets.

        Only sockets this server bound are removed: a path it refused to take over
        is left as it was found.
        """
        for server, path in (
            (self._registration, self.registration_socket),
            (self._dra, self.dra_socket),
        ):
            if server is not None:
                await server.stop(grace)
            if path in self._bound:
                path.unlink(missing_ok=True)
        self._dra = self._registration = None
        self._bound.clear()

    async def wait(self) -> None:
        """Return when the DRA server stops (it only stops on :meth:`stop` or a failure).

        Cancelling this wait must not reach gRPC's own shutdown future, which a later
        :meth:`stop` awaits; hence the shield.
        """
        if self._dra is not None:
            await asyncio.shield(self._dra.wait_for_termination())


async def _listen(server: aio.Server, path: pathlib.Path) -> None:
    clear_stale_socket(path)
    try:
        server.add_insecure_port(f"unix://{path}")
    except RuntimeError as exc:
        raise SocketError(f"cannot listen on {path}: {exc}") from exc
    await server.start()
