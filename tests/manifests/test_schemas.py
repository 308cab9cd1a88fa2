"""Every shipped manifest is valid for Kubernetes 1.36, checked offline against its schemas."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from tests.support import cel, manifests

FILES = sorted(
    p.relative_to(manifests.ROOT).as_posix()
    for folder in ("manifests", "resourceclasses")
    for p in (manifests.ROOT / folder).rglob("*.yaml")
)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def documents(kind: str | None = None) -> list[Any]:
    return [
        pytest.param(d, id=f"{f}:{d['kind']}/{d['metadata']['name']}")
        for f in FILES
        for d in manifests.load(f)
        if kind is None or d["kind"] == kind
    ]


@pytest.mark.parametrize("document", documents())
def test_valid_against_the_1_36_schema_with_no_unknown_fields(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, desired_version="1.36.0", strict=True)
    assert len(document["metadata"]["name"]) <= 253
    assert DNS_SUBDOMAIN.match(document["metadata"]["name"])


@pytest.mark.parametrize("document", documents("DeviceClass"))
def test_every_cel_selector_parses(document: dict[str, Any]) -> None:
    for selector in document["spec"]["selectors"]:
        cel.check_syntax(selector["cel"]["expression"])


def test_a_broken_document_is_caught() -> None:
    broken = manifests.find("resourceclasses/gpu.gvirtus.io.yaml", "DeviceClass")
    broken["spec"]["selector"] = broken["spec"].pop("selectors")

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, desired_version="1.36.0", strict=True)


def test_there_are_manifests_to_check() -> None:
    assert any(f.startswith("manifests/") for f in FILES)
    assert any(f.startswith("resourceclasses/") for f in FILES)


def test_the_webhook_configuration_matches_what_the_webhook_serves() -> None:
    configuration = manifests.find("manifests/webhook.yaml", "MutatingWebhookConfiguration")
    service = manifests.find("manifests/webhook.yaml", "Service")
    (hook,) = configuration["webhooks"]
    client = hook["clientConfig"]["service"]

    assert configuration["metadata"]["name"] == "gvirtus-dra-webhook"
    assert (client["name"], client["namespace"], client["path"], client["port"]) == (
        service["metadata"]["name"],
        "gvirtus-system",
        "/mutate",
        443,
    )
    assert [r["operations"] for r in hook["rules"]] == [["CREATE"]]
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] <= 10
    assert hook["objectSelector"] == {"matchLabels": {"gvirtus.io/enabled": "true"}}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"gvirtus-system", "kube-system"}
