"""The agent's own nftables table: only admitted addresses reach a backend port.

Why the kernel's packet filter and not a proxy: GVirtuS makes a network round trip
per CUDA call, so nothing may sit on the data path; a rule costs nothing per packet
that a proxy's two extra socket hops would.

The table ``inet gvirtus-dra-access`` is the agent's alone (no other table is ever
read or touched). It hooks ``input`` (connections to this host's own addresses,
where host-network backends listen), and for every backend port:

* TCP from an admitted IPv4 source address to that port is accepted;
* every other packet to that port (strangers, and all IPv6) is **dropped**, not
  rejected: a frontend whose address is admitted a moment after its first SYN gets
  through on the kernel's SYN retry (1 s later), while a stranger waits and fails.

Other traffic is left alone (the chain's policy is ``accept``; a later table may
still drop what this one accepts). Each change replaces the whole table in one
``nft -f -`` transaction, which the kernel applies atomically: a packet sees either
the old rules or the new, never a table being rebuilt, so a port is never open in
between, and a table someone altered by hand is repaired by the next change.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable, Mapping

TABLE = "gvirtus-dra-access"
FAMILY = "inet"
PRIORITY = -10
"""Before the usual ``filter`` priority (0), so strangers are dropped early."""
NFT_TIMEOUT = 30.0


class PacketFilterError(Exception):
    """The packet filter could not be changed; the message says why and what to do."""


def render(*, ports: Iterable[int], admitted: Mapping[int, Iterable[str]]) -> str:
    """The transaction that makes the table exactly this: ``ports`` closed but to ``admitted``.

    Addresses listed for a port not in ``ports`` are left out: the agent filters
    only its own backends' ports.
    """
    closed = sorted(set(ports))
    pairs = sorted((address, port) for port in closed for address in set(admitted.get(port, ())))
    lines = [
        # Creating it first makes the delete valid when it does not exist yet; both,
        # and the new table, commit together.
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        "\tset ports {",
        "\t\ttype inet_service",
    ]
    if closed:
        lines.append("\t\telements = { " + ", ".join(str(p) for p in closed) + " }")
    lines += ["\t}", "\tset admitted {", "\t\ttype ipv4_addr . inet_service"]
    if pairs:
        lines.append("\t\telements = { " + ", ".join(f"{a} . {p}" for a, p in pairs) + " }")
    lines += [
        "\t}",
        "\tchain input {",
        f"\t\ttype filter hook input priority {PRIORITY}; policy accept;",
        "\t\tip saddr . tcp dport @admitted accept",
        "\t\ttcp dport @ports drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_removal() -> str:
    """The transaction that removes the table, whether it exists or not."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


def find_nft() -> str:
    """The path of the ``nft`` command.

    Raises:
        PacketFilterError: it is not installed, naming both ways out.
    """
    found = shutil.which("nft")
    if found is None:
        raise PacketFilterError(
            "the nft command (nftables) is not installed: install nftables in the agent's "
            "image (apt-get install nftables), or run the agent with --access-control off, "
            "which lets anyone who reaches a backend port use its GPU"
        )
    return found


async def apply(script: str, *, nft: str) -> None:
    """Run ``script`` as one ``nft -f -`` transaction.

    Raises:
        PacketFilterError: the kernel or ``nft`` refused it, explained.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            nft,
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise PacketFilterError(f"cannot run {nft}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(NFT_TIMEOUT):
            _, stderr = await process.communicate(script.encode())
    finally:
        if process.returncode is None:  # timed out or cancelled: never leave it behind
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise PacketFilterError(explain(stderr.decode(errors="replace"), nft=nft))


def explain(stderr: str, *, nft: str) -> str:
    """What ``nft``'s complaint means for an admin, and the fix."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    # nft echoes the offending line and marks it with carets: the error line says it all.
    detail = next((line for line in lines if "Error:" in line), lines[0] if lines else "no output")
    if "Operation not permitted" in stderr:
        return (
            f"the agent may not change the packet filter ({detail}): it needs the "
            "capability NET_ADMIN in the host's network namespace "
            "(securityContext.capabilities.add: [NET_ADMIN], as root), or run it with "
            "--access-control off"
        )
    if "not supported" in stderr.lower():
        return (
            f"the kernel has no nftables ({detail}): use a kernel with nf_tables "
            "(modprobe nf_tables), or run the agent with --access-control off"
        )
    return f"{nft} refused the access rules: {detail}"
