"""Access lists are strict: an agent that cannot understand one whole admits nobody new."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dra_driver.models import (
    AccessDocumentError,
    BackendAccess,
    PortAccess,
    access_config_map_name,
    parse_access,
)


def document(**changes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "access.gpu.gvirtus.io/v1",
        "kind": "BackendAccess",
        "nodeName": "gpu-node-1",
        "ports": [
            {"port": 10000, "addresses": ["10.244.2.7", "10.244.1.5"]},
            {"port": 9999, "addresses": []},
        ],
        **changes,
    }


def test_a_list_gives_the_addresses_of_each_port() -> None:
    parsed = parse_access(json.dumps(document()))
    assert parsed.admitted() == {10000: {"10.244.1.5", "10.244.2.7"}, 9999: frozenset()}


def test_the_encoding_is_canonical_so_equal_lists_compare_equal() -> None:
    """The controller writes only when the encoding changed: order must not matter."""
    shuffled = BackendAccess(
        node_name="gpu-node-1",
        ports=(
            PortAccess(port=10000, addresses=("10.244.2.7", "10.244.1.5")),
            PortAccess(port=9999, addresses=()),
        ),
    )
    ordered = parse_access(shuffled.encode())
    assert shuffled.encode() == ordered.encode()
    assert json.loads(shuffled.encode())["ports"] == [
        {"port": 9999, "addresses": []},
        {"port": 10000, "addresses": ["10.244.1.5", "10.244.2.7"]},
    ]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"apiVersion": "access.gpu.gvirtus.io/v2"}, "apiVersion: Input should be"),
        ({"kind": "Other"}, "kind: Input should be 'BackendAccess'"),
        ({"extra": True}, "extra: Extra inputs are not permitted"),
        ({"nodeName": ""}, "nodeName: String should have at least 1 character"),
        ({"ports": [{"port": 0, "addresses": []}]}, "ports.0.port"),
        ({"ports": [{"port": "9999", "addresses": []}]}, "ports.0.port: Input should be"),
        ({"ports": [{"port": 9999, "addresses": [], "x": 1}]}, "ports.0.x: Extra inputs"),
        ({"ports": [{"port": 9999, "addresses": ["10.0.0.1", "10.0.0.1"]}]}, "listed twice"),
        (
            {"ports": [{"port": 9999, "addresses": []}, {"port": 9999, "addresses": []}]},
            "a port is listed twice",
        ),
        ({"ports": [{"port": 9999, "addresses": ["fd00::1"]}]}, "is not an IPv4 address"),
        ({"ports": [{"port": 9999, "addresses": ["0.0.0.0"]}]}, "cannot be reached"),
        ({"ports": [{"port": 9999, "addresses": ["10.0.0.0/8"]}]}, "is not an IPv4 address"),
    ],
    ids=[
        "newer-version",
        "other-kind",
        "unknown-key",
        "no-node",
        "port-zero",
        "port-as-string",
        "unknown-port-key",
        "address-twice",
        "port-twice",
        "ipv6",
        "unspecified",
        "a-network",
    ],
)
def test_a_malformed_list_is_refused_naming_the_problem(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(AccessDocumentError, match=problem.replace(".", r"\.")):
        parse_access(json.dumps(document(**changes)))


@pytest.mark.parametrize(
    "raw", ["", "not json", "[]", "null"], ids=["empty", "text", "list", "null"]
)
def test_what_is_not_a_list_object_is_refused(raw: str) -> None:
    with pytest.raises(AccessDocumentError):
        parse_access(raw)


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("gpu-node-1", "gvirtus-dra-access-gpu-node-1"),
        ("a" * 234, "gvirtus-dra-access-" + "a" * 234),
    ],
    ids=["usual", "longest-kept-whole"],
)
def test_the_config_map_is_named_after_the_node(node: str, expected: str) -> None:
    assert access_config_map_name(node) == expected


def test_a_node_name_too_long_for_the_prefix_still_gives_a_valid_unique_name() -> None:
    first, second = (access_config_map_name("a" * 240 + suffix) for suffix in ("x", "y"))
    assert first != second
    assert len(first) == len(second) == 253
    assert first.startswith("gvirtus-dra-access-aaa")
