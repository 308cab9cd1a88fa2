"""Pods that use ResourceClaims, as the controller keeps them in memory.

Whether a claim is still in its binding phase is a fact about its pods, not about
the allocation: a real 1.36 scheduler leaves ``bindingConditions`` in the
allocation after the pod is bound (dra-facts §0). And who may reach a backend is a
fact about the addresses of the pods a claim is reserved for. The controller
watches every pod but keeps only those that use claims (named in
``spec.resourceClaims``, or given one by the scheduler for an extended resource,
``status.extendedResourceClaimStatus``), and of those only what it needs: the node
a pod is bound to, its IPv4 addresses and whether it uses the host's network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from dra_driver.kube.index import Index

Obj = dict[str, Any]

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class PodRecord:
    """A pod that uses at least one ResourceClaim."""

    uid: str
    node: str
    """``spec.nodeName``: empty until the scheduler binds the pod."""
    ip: str = ""
    """Its IPv4 address (``status.podIPs``); empty until it has one, and once it finished."""
    host_ip: str = ""
    """Its node's IPv4 address (``status.hostIPs``); empty likewise."""
    host_network: bool = False

    @property
    def source(self) -> str:
        """The address its frontends connect from; empty while it has none.

        GVirtuS speaks IPv4 only, so a frontend dialing a backend's IPv4 address
        sends from the pod's IPv4 address; from the node's for a host-network pod.
        """
        return self.host_ip if self.host_network else self.ip


def _first_ipv4(status: Obj, plural: str, singular: str) -> str:
    """The first IPv4 address of ``status.<plural>`` (or ``status.<singular>``)."""
    listed = [str(entry.get("ip", "")) for entry in status.get(plural) or []]
    for value in [*listed, str(status.get(singular) or "")]:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            continue
    return ""


def uses_claims(obj: Obj) -> bool:
    """Whether a pod names claims, or was given one for an extended resource."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return bool(spec.get("resourceClaims") or status.get("extendedResourceClaimStatus"))


def pod_record(obj: Obj) -> PodRecord | None:
    """The record of a pod using claims; None for every other pod.

    A pod that finished keeps its addresses in its status, but no longer holds them:
    the network plugin may give them to another pod, so the record has none.
    """
    if not uses_claims(obj):
        return None
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    finished = status.get("phase") in TERMINAL_PHASES
    return PodRecord(
        uid=str(meta.get("uid", "")),
        node=str(spec.get("nodeName") or ""),
        ip="" if finished else _first_ipv4(status, "podIPs", "podIP"),
        host_ip="" if finished else _first_ipv4(status, "hostIPs", "hostIP"),
        host_network=bool(spec.get("hostNetwork")),
    )


class PodIndex(Index[PodRecord]):
    """Pods using claims by ``namespace/name``, answering by UID."""

    def __init__(self) -> None:
        super().__init__(pod_record)
        self._by_uid: tuple[int, dict[str, PodRecord]] = (-1, {})

    def by_uid(self, uid: str) -> PodRecord | None:
        """The pod with this UID, if kept."""
        version, by_uid = self._by_uid
        if version != self.version:
            by_uid = {record.uid: record for record in self.items.values()}
            self._by_uid = (self.version, by_uid)
        return by_uid.get(uid)

    def any_bound(self, uids: tuple[str, ...]) -> bool:
        """Whether any of these pods is bound to a node."""
        return any((found := self.by_uid(uid)) is not None and found.node for uid in uids)
