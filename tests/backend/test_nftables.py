"""The agent's table, as text for ``nft -f -``, and what ``nft``'s complaints mean for an admin.

The rules themselves are exercised in the kernel by ``test_access.py``; these pin
down what the transaction says and that a complaint names its fix.
"""

from __future__ import annotations

import pytest

from backend import nftables


def test_a_change_replaces_the_whole_table_in_one_transaction() -> None:
    script = nftables.render(ports=[10000, 9999], admitted={9999: ["10.0.0.2", "10.0.0.1"]})

    assert script.splitlines()[:3] == [
        "table inet gvirtus-dra-access",
        "delete table inet gvirtus-dra-access",
        "table inet gvirtus-dra-access {",
    ]
    assert "\t\telements = { 9999, 10000 }" in script
    assert "\t\telements = { 10.0.0.1 . 9999, 10.0.0.2 . 9999 }" in script
    assert script.endswith(
        "\tchain input {\n"
        "\t\ttype filter hook input priority -10; policy accept;\n"
        "\t\tip saddr . tcp dport @admitted accept\n"
        "\t\ttcp dport @ports drop\n"
        "\t}\n"
        "}\n"
    )


@pytest.mark.parametrize(
    ("ports", "admitted", "port_elements", "admitted_elements"),
    [
        ([9999], {}, "{ 9999 }", None),
        ([9999], {9999: []}, "{ 9999 }", None),
        ([9999], {10001: ["10.0.0.9"]}, "{ 9999 }", None),
        ([], {9999: ["10.0.0.9"]}, None, None),
        ([9999, 9999], {9999: ["10.0.0.9", "10.0.0.9"]}, "{ 9999 }", "{ 10.0.0.9 . 9999 }"),
    ],
    ids=[
        "nobody-admitted",
        "empty-list",
        "another-nodes-port-ignored",
        "no-ports",
        "duplicates-once",
    ],
)
def test_only_the_agents_own_ports_are_closed_and_opened(
    ports: list[int],
    admitted: dict[int, list[str]],
    port_elements: str | None,
    admitted_elements: str | None,
) -> None:
    script = nftables.render(ports=ports, admitted=admitted)
    lines = [line.strip() for line in script.splitlines() if "elements" in line]

    assert lines == [f"elements = {e}" for e in (port_elements, admitted_elements) if e is not None]


def test_removal_is_valid_whether_the_table_exists_or_not() -> None:
    assert nftables.render_removal() == (
        "table inet gvirtus-dra-access\ndelete table inet gvirtus-dra-access\n"
    )


@pytest.mark.parametrize(
    ("stderr", "explained"),
    [
        (
            "netlink: Error: cache initialization failed: Operation not permitted\n",
            "the agent may not change the packet filter (netlink: Error: cache initialization "
            "failed: Operation not permitted): it needs the capability NET_ADMIN",
        ),
        (
            "/dev/stdin:1:1-29: Error: Could not process rule: Operation not permitted\n"
            "table inet gvirtus-dra-access\n^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
            "(/dev/stdin:1:1-29: Error: Could not process rule: Operation not permitted)",
        ),
        (
            "netlink: Error: cache initialization failed: Protocol not supported\n",
            "the kernel has no nftables (netlink: Error: cache initialization failed: Protocol "
            "not supported): use a kernel with nf_tables (modprobe nf_tables), or run the agent "
            "with --access-control off",
        ),
        (
            "/dev/stdin:3:1-2: Error: Could not process rule: Operation not supported\n",
            "the kernel has no nftables",
        ),
        (
            "/dev/stdin:9:3-9: Error: syntax error, unexpected junk\n\tjunk\n\t^^^^\n",
            "/usr/sbin/nft refused the access rules: /dev/stdin:9:3-9: Error: syntax error, "
            "unexpected junk",
        ),
        ("", "/usr/sbin/nft refused the access rules: no output"),
    ],
    ids=[
        "no-net-admin",
        "no-net-admin-carets-left-out",
        "no-nf-tables",
        "no-nf-tables-module-feature",
        "anything-else",
        "silent",
    ],
)
def test_a_complaint_names_its_fix(stderr: str, explained: str) -> None:
    assert explained in nftables.explain(stderr, nft="/usr/sbin/nft")
