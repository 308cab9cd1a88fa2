"""RBAC as the API server evaluates it, for checking the shipped roles against real requests.

A component's requests to the test API server (told apart by User-Agent) are
turned into the attributes the authorizer sees (verb, API group, resource,
subresource, namespace, name) and checked against the Roles and ClusterRoles the
manifests bind to the component's ServiceAccount. A server-side apply of a whole
object may create it, which the API server authorizes as ``create`` too, so it is
checked as both ``patch`` and ``create``. Writing a claim's
``status.devices`` also needs ``arbitrary-node:<verb>`` on the synthetic
``resourceclaims/driver`` subresource named after the driver (1.36 granular
status authorization), which is checked too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.support.apiserver import Request

Obj = dict[str, Any]
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Access:
    """What the authorizer is asked about one request."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    def __str__(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {self.group or 'core'}/{what} {self.name}{where}".replace("  ", " ")


def accesses(request: Request, *, driver: str = "gpu.gvirtus.io") -> list[Access]:
    """The authorization checks one request needs (a malformed path is never allowed)."""
    if "//" in request.path:
        return [Access("request-to-malformed-path", "", request.path)]
    parts = [p for p in request.path.split("/") if p]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if request.method == "GET":
        verb = "get" if name else ("watch" if request.query.get("watch") else "list")
    else:
        verb = VERBS[request.method]
    found = [Access(verb, group, resource, subresource, namespace, name)]
    if verb == "patch" and request.content_type == APPLY and not subresource:
        found.append(Access("create", group, resource, "", namespace, name))
    if resource == "resourceclaims" and subresource == "status" and verb in ("update", "patch"):
        found.append(Access(f"arbitrary-node:{verb}", group, resource, "driver", namespace, driver))
    return found


def _matches(rule: Obj, access: Access) -> bool:
    resource = access.resource + (f"/{access.subresource}" if access.subresource else "")
    names = rule.get("resourceNames") or []
    return bool(
        {"*", access.group} & set(rule.get("apiGroups") or [])
        and {"*", resource} & set(rule.get("resources") or [])
        and {"*", access.verb} & set(rule.get("verbs") or [])
    ) and (not names or access.name in names)


@dataclass(frozen=True)
class Permissions:
    """The rules bound to one ServiceAccount: cluster-wide, and per namespace."""

    cluster: tuple[Obj, ...]
    namespaced: dict[str, tuple[Obj, ...]]

    def allows(self, access: Access) -> bool:
        rules = self.cluster + (
            self.namespaced.get(access.namespace, ()) if access.namespace else ()
        )
        return any(_matches(rule, access) for rule in rules)


def permissions(documents: Iterable[Obj], *, account: str, namespace: str) -> Permissions:
    """What the manifests grant ``system:serviceaccount:<namespace>:<account>``."""
    documents = list(documents)
    roles = {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d.get("rules") or []
        for d in documents
        if d["kind"] in ("Role", "ClusterRole")
    }
    cluster: list[Obj] = []
    namespaced: dict[str, list[Obj]] = {}
    for binding in documents:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == account
            and s.get("namespace") == namespace
            for s in binding.get("subjects") or []
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace", "")
        role_namespace = scope if ref["kind"] == "Role" else ""
        rules = roles.get((ref["kind"], role_namespace, ref["name"]), [])
        if binding["kind"] == "ClusterRoleBinding":
            cluster += rules
        else:
            namespaced.setdefault(scope, []).extend(rules)
    return Permissions(tuple(cluster), {k: tuple(v) for k, v in namespaced.items()})


def denied(requests: Iterable[Request], *, component: str, allowed: Permissions) -> list[str]:
    """Every check a component's requests needed that its roles do not grant."""
    missing = []
    for request in requests:
        if f"({component};" not in request.user_agent:
            continue
        missing += [str(a) for a in accesses(request) if not allowed.allows(a)]
    return sorted(set(missing))
