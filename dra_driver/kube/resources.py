"""Every kind of API object the project touches, described once.

A :class:`Resource` names where a kind lives (group, version, plural, scope) and how
the official client library names it (its API class and the snake-case name in its
method names), so :class:`dra_driver.kube.client.KubeClient` can offer verbs such as
``get(RESOURCE_CLAIMS, ...)`` without any component spelling a URL or calling the
generated client's plumbing. Adding a kind means adding one line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One kind of API object."""

    group: str
    """API group; empty for the core group."""
    version: str
    plural: str
    kind: str
    namespaced: bool
    api: str
    """The client library's API class, e.g. ``ResourceV1Api``."""
    singular: str
    """The snake-case name in the library's method names, e.g. ``resource_slice``."""

    @property
    def api_version(self) -> str:
        """``apiVersion`` of its objects."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


NODES = Resource("", "v1", "nodes", "Node", False, "CoreV1Api", "node")
PODS = Resource("", "v1", "pods", "Pod", True, "CoreV1Api", "pod")
EVENTS = Resource("", "v1", "events", "Event", True, "CoreV1Api", "event")
SECRETS = Resource("", "v1", "secrets", "Secret", True, "CoreV1Api", "secret")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap", True, "CoreV1Api", "config_map")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False, "CoreV1Api", "namespace")
LEASES = Resource(
    "coordination.k8s.io", "v1", "leases", "Lease", True, "CoordinationV1Api", "lease"
)
RESOURCE_SLICES = Resource(
    "resource.k8s.io",
    "v1",
    "resourceslices",
    "ResourceSlice",
    False,
    "ResourceV1Api",
    "resource_slice",
)
RESOURCE_CLAIMS = Resource(
    "resource.k8s.io",
    "v1",
    "resourceclaims",
    "ResourceClaim",
    True,
    "ResourceV1Api",
    "resource_claim",
)
RESOURCE_CLAIM_TEMPLATES = Resource(
    "resource.k8s.io",
    "v1",
    "resourceclaimtemplates",
    "ResourceClaimTemplate",
    True,
    "ResourceV1Api",
    "resource_claim_template",
)
DEVICE_CLASSES = Resource(
    "resource.k8s.io", "v1", "deviceclasses", "DeviceClass", False, "ResourceV1Api", "device_class"
)
MUTATING_WEBHOOK_CONFIGURATIONS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    False,
    "AdmissionregistrationV1Api",
    "mutating_webhook_configuration",
)
DEVICE_TAINT_RULES = Resource(
    "resource.k8s.io",
    "v1",
    "devicetaintrules",
    "DeviceTaintRule",
    False,
    "ResourceV1Api",
    "device_taint_rule",
)
"""GA in Kubernetes 1.37."""
DEVICE_TAINT_RULES_V1BETA2 = Resource(
    "resource.k8s.io",
    "v1beta2",
    "devicetaintrules",
    "DeviceTaintRule",
    False,
    "ResourceV1beta2Api",
    "device_taint_rule",
)
"""Kubernetes 1.36, behind the DRADeviceTaintRules gate."""
