"""Which gated ResourceSlice fields the API server keeps, learned rather than assumed.

An API server silently drops the fields of a disabled feature gate (1.34 and 1.35
defaults, or an admin's choice). The controller asks once at start and every ten
minutes, with a dry-run create of a probe slice, and also compares every written
slice with the server's answer. What it learns only ever narrows what it publishes
until the next probe; each loss is logged and recorded once as an Event on the
controller's pod, with what the driver does instead.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.resources import RESOURCE_SLICES

log = logging.getLogger(__name__)

READY_CONDITION = "gvirtus.io/BackendReady"
FAILURE_CONDITION = "gvirtus.io/BackendUnavailable"
REPROBE_EVERY = 600.0

Obj = dict[str, Any]


@dataclass(frozen=True)
class Features:
    """Fields the API server keeps (its feature gates are on)."""

    taints: bool = True
    capacity: bool = True
    binding: bool = True


def dropped_features(sent: Obj, stored: Obj, features: Features) -> tuple[Features, list[str]]:
    """Compare a written slice with the server's answer: which gated fields vanished."""
    kept = features
    dropped = []
    stored_devices = {d.get("name"): d for d in (stored.get("spec") or {}).get("devices") or []}
    for device in (sent.get("spec") or {}).get("devices") or []:
        answer = stored_devices.get(device["name"], {})
        if device.get("taints") and not answer.get("taints") and kept.taints:
            kept = dataclasses.replace(kept, taints=False)
            dropped.append("device taints (DRADeviceTaints)")
        if device.get("bindingConditions") and not answer.get("bindingConditions") and kept.binding:
            kept = dataclasses.replace(kept, binding=False)
            dropped.append("binding conditions (DRADeviceBindingConditions)")
        policy = (device.get("capacity") or {}).get("memory", {}).get("requestPolicy")
        answered = (answer.get("capacity") or {}).get("memory", {}).get("requestPolicy")
        if (
            (device.get("allowMultipleAllocations") or policy)
            and kept.capacity
            and (not answer.get("allowMultipleAllocations") or not answered)
        ):
            kept = dataclasses.replace(kept, capacity=False)
            dropped.append("consumable capacity (DRAConsumableCapacity)")
    return kept, dropped


def probe_slice(*, driver: str) -> Obj:
    """A slice using every gated field, for a dry-run create."""
    device = {
        "name": "probe",
        "allowMultipleAllocations": True,
        "capacity": {
            "memory": {
                "value": "2Gi",
                "requestPolicy": {
                    "default": "1Gi",
                    "validRange": {"min": "1Gi", "max": "2Gi", "step": "1Gi"},
                },
            }
        },
        "taints": [{"key": "gvirtus.io/probe", "value": "probe", "effect": "NoSchedule"}],
        "bindingConditions": [READY_CONDITION],
        "bindingFailureConditions": [FAILURE_CONDITION],
    }
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"generateName": "gvirtus-dra-feature-probe-"},
        "spec": {
            "driver": driver,
            "pool": {"name": "gvirtus-dra-feature-probe", "generation": 0, "resourceSliceCount": 1},
            "allNodes": True,
            "devices": [device],
        },
    }


async def probe_features(kube: KubeClient, *, driver: str) -> Features:
    """Ask the API server, with a dry-run create, which gated fields it keeps."""
    probe = probe_slice(driver=driver)
    stored = await kube.create(RESOURCE_SLICES, probe, dry_run=True)
    features, _ = dropped_features(probe, stored, Features())
    return features


class FeatureGates:
    """Owns the features the controller publishes with; see the module docstring."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        driver: str,
        events: EventRecorder,
        pod: Regarding | None,
        uses_binding_conditions: bool,
        fallback_sharing: str,
    ) -> None:
        self.kube = kube
        self.driver = driver
        self.events = events
        self.pod = pod
        self.uses_binding_conditions = uses_binding_conditions
        self.fallback_sharing = fallback_sharing
        self.current = Features()
        self.version = 0
        """Counts changes, so pools published with older features are redone."""

    async def probe(self) -> None:
        """Learn the server's features with a dry run (a failure keeps what is known)."""
        try:
            features = await probe_features(self.kube, driver=self.driver)
        except errors.KubeError as exc:
            log.warning(
                "cannot probe API server features (%s); detecting dropped fields on write",
                exc.message,
            )
            return
        await self.adopt(features, dropped=[])

    async def adopt(self, features: Features, *, dropped: list[str]) -> None:
        """Publish with ``features`` from now on; say once what that loses."""
        if features == self.current:
            return
        lost = self._losses(features)
        self.current = features
        self.version += 1
        if not lost:
            return
        message = (
            "the API server drops "
            + "; ".join(lost)
            + " (a feature gate is off, or Kubernetes is older than 1.36)"
        )
        log.warning(message, extra={"dropped": dropped})
        if self.pod is not None:
            await self.events.record(
                self.pod, warning=True, reason="GVirtuSFeatureUnavailable", message=message
            )

    def _losses(self, features: Features) -> list[str]:
        lost = []
        if self.current.taints and not features.taints:
            lost.append(
                "device taints (DRADeviceTaints): unhealthy GPUs are left out of their pool"
            )
        if self.current.binding and not features.binding and self.uses_binding_conditions:
            lost.append(
                "binding conditions (DRADeviceBindingConditions): pods are bound without "
                "waiting for their backend to be confirmed; claim status is still recorded"
            )
        if self.current.capacity and not features.capacity:
            lost.append(
                "consumable capacity (DRAConsumableCapacity): "
                f"sharing falls back to {self.fallback_sharing}"
            )
        return lost
