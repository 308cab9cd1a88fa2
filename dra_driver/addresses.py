"""The one rule for a backend address a GVirtuS frontend in a pod can dial.

The frontend's parser accepts a literal dotted IPv4 address and nothing else (no
host names, no IPv6). Of those, an address that names no remote host from inside a
pod is refused too: unspecified, loopback (a pod's own), link-local (cloud metadata
services live there, and such addresses do not cross nodes), multicast, broadcast
and the reserved 240/4. The agent's settings, the inventory it reports, the devices
the controller publishes and the files the kubelet plugin writes all check with
this one function, so no component accepts what another refuses.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator


class AddressError(ValueError):
    """Not an address a frontend can use; the message says why and what instead."""


def routable_ipv4(value: object) -> ipaddress.IPv4Address:
    """Parse ``value`` as a backend address frontends can reach.

    Raises:
        AddressError: naming the value and what GVirtuS needs instead.
    """
    if not isinstance(value, str):
        raise AddressError(f"{value!r} is not a string IPv4 address")
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise AddressError(
            f"{value!r} is not an IPv4 address: the GVirtuS frontend takes nothing that is "
            "not a literal IPv4 address (no host names, no IPv6)"
        ) from exc
    if (
        ip.is_unspecified
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise AddressError(
            f"{value} cannot be reached from other nodes: a GVirtuS frontend cannot reach a "
            "backend from inside a pod at an unspecified, loopback, link-local, multicast or "
            "reserved address; use the backend node's routable IPv4 address"
        )
    return ip


def _check(value: str) -> str:
    routable_ipv4(value)
    return value


RoutableIPv4 = Annotated[str, AfterValidator(_check)]
"""A pydantic field type for :func:`routable_ipv4` (kept as the string given)."""
