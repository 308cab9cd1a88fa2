"""GVirtuS ``properties.json`` files, exactly as GVirtuS parses them.

Frontend and backend read the same format. Only ``communicator[0]`` is used; its
``server_address`` must be a literal dotted IPv4 address (anything else silently
becomes an empty host) and ``port`` must be a JSON *string* (a number is a type
error). So a file holds exactly one communicator, and an endpoint is checked here
before it is written: a wrong file would only show up as a crash inside the user's
application. The backend also reads ``plugins`` (which CUDA libraries it serves) and
binds every address whatever ``server_address`` says.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from dra_driver import addresses

CONTAINER_PATH = "/etc/gvirtus/properties.json"
"""Where containers find the file; ``GVIRTUS_CONFIG`` points here."""

# The frontend's port pattern has a typo that rejects 65500-65529.
_FRONTEND_REJECTED_PORTS = range(65500, 65530)


class EndpointError(ValueError):
    """A backend endpoint the GVirtuS frontend cannot use."""


@dataclass(frozen=True)
class Endpoint:
    """A GVirtuS backend a frontend connects to over TCP."""

    address: ipaddress.IPv4Address
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


def parse_endpoint(*, address: object, port: object) -> Endpoint:
    """Validate a backend address and port as published on a device.

    Raises:
        EndpointError: saying what is wrong and what GVirtuS needs instead.
    """
    if not isinstance(address, str):
        raise EndpointError(f"backendAddress must be a string IPv4 address, got {address!r}")
    try:
        ip = addresses.routable_ipv4(address)
    except addresses.AddressError as exc:
        raise EndpointError(f"backendAddress {exc}") from exc
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise EndpointError(f"backendPort must be an integer from 1 to 65535, got {port!r}")
    if port in _FRONTEND_REJECTED_PORTS:
        raise EndpointError(
            f"backendPort {port} is rejected by the GVirtuS frontend's port parser "
            "(65500-65529); configure the backend on another port"
        )
    return Endpoint(ip, port)


def render_properties(endpoint: Endpoint) -> bytes:
    """The ``properties.json`` that points a frontend at ``endpoint``."""
    return _render(address=str(endpoint.address), port=endpoint.port, plugins=None)


BACKEND_PLUGINS = (
    "cuda",
    "cudart",
    "cublas",
    "curand",
    "cudnn",
    "cufft",
    "cusolver",
    "cusparse",
    "nvrtc",
    "nvml",
)
"""The CUDA libraries a GVirtuS build serves (``libgvirtus-plugin-<name>.so``)."""


def render_backend_properties(
    *, port: int, plugins: tuple[str, ...], address: str = "0.0.0.0"
) -> bytes:
    """The ``properties.json`` a ``gvirtus-backend`` process is started with.

    The real backend listens on every address whatever ``address`` says; the
    simulator's stand-in listens on ``address``.

    Raises:
        EndpointError: a port the GVirtuS parser refuses.
    """
    parse_endpoint(address="192.0.2.1", port=port)  # the same port rules as frontends
    return _render(address=address, port=port, plugins=plugins)


def _render(*, address: str, port: int, plugins: tuple[str, ...] | None) -> bytes:
    communicator: dict[str, object] = {
        "endpoint": {
            "suite": "tcp/ip",
            "protocol": "tcp",
            "server_address": address,
            "port": str(port),
        }
    }
    if plugins is not None:
        communicator["plugins"] = list(plugins)
    document = {"communicator": [communicator], "secure_application": False}
    return (json.dumps(document, indent=4) + "\n").encode()
