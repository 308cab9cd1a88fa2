"""Every object an install applies is valid for Kubernetes 1.36, checked offline.

Kustomizations are rendered with ``kubectl kustomize`` (what ``kubectl apply -k``
runs) and every object is validated against the 1.36 OpenAPI schemas with unknown
fields refused. The example DeviceClasses, which no kustomization applies, are
validated as files, and so are the demo's examples.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import cel, manifests, selectors

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
EXAMPLES = sorted(
    p.relative_to(manifests.ROOT).as_posix()
    for folder in ("resourceclasses/examples", "demo/examples")
    for p in (manifests.ROOT / folder).glob("*.yaml")
)


def problems(objects: list[dict[str, Any]]) -> list[str]:
    found = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, desired_version="1.36.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            found.append(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")
        if not DNS_SUBDOMAIN.match(obj["metadata"]["name"]) or len(obj["metadata"]["name"]) > 253:
            found.append(f"{where}: the name is not a DNS subdomain")
    return found


@pytest.mark.parametrize("install", manifests.INSTALLS)
def test_every_installed_object_is_valid_for_1_36(install: str) -> None:
    objects = manifests.render(install)

    assert len(objects) > 20
    assert problems(objects) == []


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_class_is_valid_for_1_36(example: str) -> None:
    assert problems(manifests.load(example)) == []


def documented(page: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a page's YAML examples."""
    text = (manifests.ROOT / page).read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [d for block in blocks for d in yaml.safe_load_all(block) if d]


def test_the_security_pages_network_policies_are_valid_for_1_36() -> None:
    policies = documented("docs/security.md")

    workloads = [
        o for o in manifests.render("manifests") if o["kind"] in ("Deployment", "DaemonSet")
    ]

    assert [p["kind"] for p in policies] == ["NetworkPolicy", "NetworkPolicy"]
    assert problems(policies) == []
    for policy in policies:
        wanted = selectors.from_label_selector(policy["spec"]["podSelector"])
        (workload,) = [
            w for w in workloads if selectors.labels_match(wanted, w["spec"]["template"])
        ]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        served = {p["containerPort"] for p in container["ports"]}
        opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert served <= opened, f"{policy['metadata']['name']} closes a port the pod serves"


@pytest.mark.parametrize("install", manifests.INSTALLS)
def test_every_cel_expression_parses(install: str) -> None:
    objects = manifests.render(install) + [d for e in EXAMPLES for d in manifests.load(e)]
    expressions = [
        s["cel"]["expression"]
        for o in objects
        if o["kind"] == "DeviceClass"
        for s in o["spec"]["selectors"]
    ]
    for policy in (o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"):
        spec = policy["spec"]
        expressions += [c["expression"] for c in spec.get("matchConditions") or []]
        expressions += [v["expression"] for v in spec.get("variables") or []]
        for validation in spec["validations"]:
            expressions += [validation["expression"], validation.get("messageExpression", "true")]

    assert len(expressions) >= 10
    for expression in expressions:
        cel.check_syntax(expression)


def test_a_broken_object_is_caught() -> None:
    broken = manifests.find("resourceclasses/gpu.gvirtus.io.yaml", "DeviceClass")
    broken["spec"]["selector"] = broken["spec"].pop("selectors")

    assert problems([broken]) == [
        "DeviceClass/gpu.gvirtus.io: Additional properties are not allowed "
        "('selector' was unexpected) at spec"
    ]


def test_no_file_in_manifests_is_left_out_of_its_kustomization() -> None:
    folders = (
        "manifests/base",
        "manifests/overlays/simulator",
        "manifests/overlays/kai",
        "resourceclasses",
        "resourceclasses/kai",
    )
    for folder in folders:
        listed = manifests.load(f"{folder}/kustomization.yaml")[0]
        used = set(listed.get("resources") or []) | {
            p["path"] for p in listed.get("patches") or [] if "path" in p
        }
        files = {
            p.name
            for p in (manifests.ROOT / folder).glob("*.yaml")
            if p.name != "kustomization.yaml"
        }
        assert files <= used, f"{folder}: {sorted(files - used)} are applied by nothing"
