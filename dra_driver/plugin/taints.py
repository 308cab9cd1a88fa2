"""Which published taints stop a prepare, and Kubernetes' toleration matching.

The controller keeps slices true: a device whose backend cannot serve carries the
taint ``gvirtus.io/unhealthy`` (its value is the reason). The GVirtuS frontend has
no connect timeout (a dropped SYN hangs it for 134 s, a silent backend forever), so
starting a container pointed at such a backend is worse than refusing the prepare,
which the kubelet retries. Only that key refuses: ``gvirtus.io/overloaded`` and an
admin's own keys are scheduling policy, as are admin drains (DeviceTaintRules, which
never appear in the slice). A claim whose allocation result tolerates the taint, as
the scheduler judged when it allocated, gets the device anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dra_driver.plugin.slice_cache import Taint

UNHEALTHY_TAINT = "gvirtus.io/unhealthy"


@dataclass(frozen=True)
class Toleration:
    """A device toleration (``status.allocation.devices.results[].tolerations[]``).

    ``operator`` is ``Equal`` (the API's default) or ``Exists``; an empty ``key``
    (with ``Exists``) matches every key, an empty ``effect`` every effect.
    """

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def of(cls, toleration: Mapping[str, Any]) -> Toleration:
        """From a toleration as the API server sends it (absent fields are empty)."""
        return cls(
            key=str(toleration.get("key") or ""),
            operator=str(toleration.get("operator") or "Equal"),
            value=str(toleration.get("value") or ""),
            effect=str(toleration.get("effect") or ""),
        )

    def tolerates(self, taint: Taint) -> bool:
        """Whether this toleration matches ``taint``, as the scheduler decides it."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator == "Equal" and self.value == taint.value


def refusing(taints: Iterable[Taint], tolerations: Iterable[Toleration]) -> Taint | None:
    """The first ``gvirtus.io/unhealthy`` taint none of ``tolerations`` matches, or None."""
    allowed = list(tolerations)
    for taint in taints:
        if taint.key == UNHEALTHY_TAINT and not any(t.tolerates(taint) for t in allowed):
            return taint
    return None
