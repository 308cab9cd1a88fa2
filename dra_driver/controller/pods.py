"""Pods that use ResourceClaims, as the controller keeps them in memory.

Whether a claim is still in its binding phase is a fact about its pods, not about
the allocation: a real 1.36 scheduler leaves ``bindingConditions`` in the
allocation after the pod is bound (dra-facts §0). The controller watches every
pod but keeps only those that reference claims, and of those only what it needs:
the node a pod is bound to (empty while the scheduler still holds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dra_driver.kube.index import Index

Obj = dict[str, Any]


@dataclass(frozen=True)
class PodRecord:
    """A pod that references at least one ResourceClaim."""

    uid: str
    node: str
    """``spec.nodeName``: empty until the scheduler binds the pod."""


def pod_record(obj: Obj) -> PodRecord | None:
    """The record of a pod using claims; None for every other pod."""
    spec = obj.get("spec") or {}
    if not spec.get("resourceClaims"):
        return None
    meta = obj.get("metadata") or {}
    return PodRecord(uid=str(meta.get("uid", "")), node=str(spec.get("nodeName") or ""))


class PodIndex(Index[PodRecord]):
    """Pods using claims by ``namespace/name``, answering by UID."""

    def __init__(self) -> None:
        super().__init__(pod_record)
        self._by_uid: tuple[int, dict[str, PodRecord]] = (-1, {})

    def any_bound(self, uids: tuple[str, ...]) -> bool:
        """Whether any of these pods is bound to a node."""
        version, by_uid = self._by_uid
        if version != self.version:
            by_uid = {record.uid: record for record in self.items.values()}
            self._by_uid = (self.version, by_uid)
        return any((found := by_uid.get(uid)) is not None and found.node for uid in uids)
