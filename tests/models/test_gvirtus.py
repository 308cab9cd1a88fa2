"""properties.json is exactly what the GVirtuS frontend parses; bad endpoints never reach it."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dra_driver.gvirtus import (
    BACKEND_PLUGINS,
    Endpoint,
    EndpointError,
    parse_endpoint,
    render_backend_properties,
    render_properties,
)
from tests.support import gvirtus

EXPECTED = b"""{
    "communicator": [
        {
            "endpoint": {
                "suite": "tcp/ip",
                "protocol": "tcp",
                "server_address": "10.0.0.5",
                "port": "9999"
            }
        }
    ],
    "secure_application": false
}
"""


def test_file_is_byte_for_byte_what_the_frontend_expects() -> None:
    raw = render_properties(parse_endpoint(address="10.0.0.5", port=9999))
    assert raw == EXPECTED
    assert gvirtus.parse(raw) == gvirtus.FrontendEndpoint("tcp/ip", "tcp", "10.0.0.5", 9999)


@pytest.mark.parametrize(
    ("address", "port", "message"),
    [
        ("backend-node-a.example", 9999, "not a literal IPv4 address"),
        ("fd00::5", 9999, "not a literal IPv4 address"),
        ("10.0.0.256", 9999, "not a literal IPv4 address"),
        ("010.0.0.5", 9999, "not a literal IPv4 address"),
        ("0.0.0.0", 9999, "cannot reach a backend from inside a pod"),
        ("127.0.0.1", 9999, "cannot reach a backend from inside a pod"),
        ("224.0.0.1", 9999, "cannot reach a backend from inside a pod"),
        ("169.254.169.254", 9999, "cannot reach a backend from inside a pod"),
        ("240.0.0.7", 9999, "cannot reach a backend from inside a pod"),
        (None, 9999, "must be a string IPv4 address"),
        (167772165, 9999, "must be a string IPv4 address"),
        ("10.0.0.5", 0, "from 1 to 65535"),
        ("10.0.0.5", 70000, "from 1 to 65535"),
        ("10.0.0.5", "9999", "must be an integer"),
        ("10.0.0.5", True, "must be an integer"),
        ("10.0.0.5", 65510, "rejected by the GVirtuS frontend's port parser"),
    ],
    ids=[
        "hostname",
        "ipv6",
        "octet-out-of-range",
        "leading-zero",
        "unspecified",
        "loopback",
        "multicast",
        "link-local-metadata",
        "reserved",
        "missing",
        "int-address",
        "port-zero",
        "port-too-big",
        "port-as-string",
        "port-bool",
        "port-in-frontend-gap",
    ],
)
def test_unusable_endpoints_are_refused_with_the_reason(
    address: object, port: object, message: str
) -> None:
    with pytest.raises(EndpointError, match=message):
        parse_endpoint(address=address, port=port)


@given(
    address=st.ip_addresses(v=4).filter(
        lambda ip: (
            not (
                ip.is_unspecified
                or ip.is_loopback
                or ip.is_link_local
                or ip.is_multicast
                or ip.is_reserved
            )
        )
    ),
    port=st.integers(1, 65535).filter(lambda p: not 65500 <= p <= 65529),
)
def test_every_accepted_endpoint_parses_in_the_frontend(
    address: ipaddress.IPv4Address, port: int
) -> None:
    endpoint = parse_endpoint(address=str(address), port=port)
    parsed = gvirtus.parse(render_properties(endpoint))
    assert (parsed.host, parsed.port) == (str(address), port)


def test_endpoint_prints_as_host_and_port() -> None:
    assert str(Endpoint(ipaddress.IPv4Address("10.1.2.3"), 10001)) == "10.1.2.3:10001"


def test_backend_file_binds_everywhere_and_names_the_plugins() -> None:
    raw = render_backend_properties(port=10001, plugins=("cudart", "cublas"))
    document = json.loads(raw)
    assert document == {
        "communicator": [
            {
                "endpoint": {
                    "suite": "tcp/ip",
                    "protocol": "tcp",
                    "server_address": "0.0.0.0",
                    "port": "10001",
                },
                "plugins": ["cudart", "cublas"],
            }
        ],
        "secure_application": False,
    }


def test_backend_ports_follow_the_frontends_rules() -> None:
    with pytest.raises(EndpointError, match="65500-65529"):
        render_backend_properties(port=65500, plugins=BACKEND_PLUGINS)
