"""How the GVirtuS frontend reads ``properties.json`` (tgasla/GVirtuS main, as documented).

An independent check for the files the plugin writes: it follows the frontend's
rules rather than the plugin's code. The frontend takes ``communicator[0]`` only,
accepts the suites ``tcp/ip`` and ``infiniband-rdma``, requires an unsecure protocol
when ``secure_application`` is false, keeps ``server_address`` only when it fully
matches a dotted IPv4 pattern (else the host is empty and connecting fails), and
needs ``port`` as a JSON string matching its port pattern, typo included.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
# The frontend's port pattern, including its typo that leaves out 65500-65529.
_PORT = re.compile(
    r"^([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2][0-9]\d|6553[0-5])$"
)
_UNSECURE = {"tcp", "http", "oldtcp", "ws", "ib"}


class FrontendError(Exception):
    """What the frontend would die of (it logs FATAL and exits)."""


@dataclass(frozen=True)
class FrontendEndpoint:
    suite: str
    protocol: str
    host: str
    port: int


def parse(raw: bytes) -> FrontendEndpoint:
    document = json.loads(raw)
    communicators = document["communicator"]
    if not isinstance(communicators, list) or not communicators:
        raise FrontendError("communicator must be a non-empty array")
    endpoint = communicators[0]["endpoint"]
    suite = endpoint["suite"]
    if suite not in ("tcp/ip", "infiniband-rdma"):
        raise FrontendError(f"Unsupported endpoint suite {suite}")
    secure = document.get("secure_application", False)
    if not isinstance(secure, bool):
        raise FrontendError("secure_application must be a bool")
    protocol = endpoint["protocol"]
    if not secure and protocol not in _UNSECURE:
        raise FrontendError(f"protocol {protocol} not allowed")
    port = endpoint["port"]
    if not isinstance(port, str):
        raise FrontendError("type_error: port must be a string")
    if not _PORT.match(port):
        raise FrontendError(f"port {port} rejected")
    address = endpoint["server_address"]
    host = address if isinstance(address, str) and _IPV4.match(address) else ""
    if not host:
        raise FrontendError("Can't resolve hostname ''")
    return FrontendEndpoint(suite, protocol, host, int(port))
