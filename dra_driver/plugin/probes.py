"""Self-checks that exercise the plugin's real sockets, as the kubelet would.

Liveness calls ``GetInfo`` on the registration socket and an empty
``NodePrepareResources`` (which touches no claim) on the DRA socket: a plugin whose
process runs but whose sockets are gone or wedged is not alive for the kubelet. The
probe keeps its connections, which outlive a socket file removed from under them, so
it also checks that each file is still there: the kubelet dials the path.
"""

from __future__ import annotations

import os
import pathlib
import stat

import grpc
from grpc import aio

from dra_driver.kubeletapi.dra.v1 import api_pb2 as v1_pb
from dra_driver.kubeletapi.dra.v1 import api_pb2_grpc as v1_grpc
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2 as reg_pb
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2_grpc as reg_grpc


class SocketProbe:
    """Keeps one channel per socket and checks both answer within ``timeout``."""

    def __init__(
        self, *, dra_socket: pathlib.Path, registration_socket: pathlib.Path, timeout: float = 1.0
    ) -> None:
        self.timeout = timeout
        self._paths = {"registration socket": registration_socket, "DRA socket": dra_socket}
        self._dra = aio.insecure_channel(f"unix://{dra_socket}")
        self._registration = aio.insecure_channel(f"unix://{registration_socket}")

    async def check(self) -> str | None:
        """None when both sockets answer, else what failed."""
        for name, path in self._paths.items():
            if not _is_socket(path):
                return f"{name}: {path} is no longer a socket; the kubelet cannot dial it"
        try:
            await reg_grpc.RegistrationStub(self._registration).GetInfo(
                reg_pb.InfoRequest(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            return f"registration socket: {exc.code().name}: {exc.details()}"
        try:
            await v1_grpc.DRAPluginStub(self._dra).NodePrepareResources(
                v1_pb.NodePrepareResourcesRequest(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            return f"DRA socket: {exc.code().name}: {exc.details()}"
        return None

    async def close(self) -> None:
        """Close both channels."""
        await self._dra.close()
        await self._registration.close()


def _is_socket(path: pathlib.Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False
