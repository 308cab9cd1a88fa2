"""Which namespaces the webhook acts in, decided from its configuration's selectors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.webhook.conftest import configuration
from webhook.scope import OutOfScope, Scope, ScopeUnknown

NAME = "kubernetes.io/metadata.name"


def with_selectors(*selectors: Any) -> dict[str, Any]:
    made = configuration()
    first = made["webhooks"][0]
    made["webhooks"] = []
    for selector in selectors:
        webhook = copy.deepcopy(first)
        webhook.pop("namespaceSelector", None)
        if selector is not None:
            webhook["namespaceSelector"] = selector
        made["webhooks"].append(webhook)
    return made


def names(operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": NAME, "operator": operator, "values": list(values)}]}


@pytest.mark.parametrize(
    ("current", "namespace", "verdict"),
    [
        pytest.param(configuration(), "gvirtus-demo", None, id="shipped-selects-a-team"),
        pytest.param(configuration(), "kube-system", OutOfScope, id="shipped-excludes-kube-system"),
        pytest.param(configuration(), "gvirtus-system", OutOfScope, id="shipped-excludes-own"),
        pytest.param(with_selectors(None), "kube-system", None, id="no-selector-selects-all"),
        pytest.param(with_selectors({}), "kube-system", None, id="empty-selector-selects-all"),
        pytest.param(
            with_selectors({"matchLabels": {NAME: "team-a"}}), "team-a", None, id="match-labels"
        ),
        pytest.param(
            with_selectors({"matchLabels": {NAME: "team-a"}}),
            "team-b",
            OutOfScope,
            id="match-labels-other",
        ),
        pytest.param(with_selectors(names("In", "a", "b")), "b", None, id="in"),
        pytest.param(with_selectors(names("In", "a", "b")), "c", OutOfScope, id="not-in-in"),
        pytest.param(with_selectors(names("Exists")), "c", None, id="exists"),
        pytest.param(with_selectors(names("DoesNotExist")), "c", OutOfScope, id="does-not-exist"),
        pytest.param(
            with_selectors(names("In", "a"), names("In", "b")), "b", None, id="any-webhook-selects"
        ),
        pytest.param(
            with_selectors({"matchLabels": {"team": "ml"}}),
            "gvirtus-demo",
            ScopeUnknown,
            id="other-label-is-not-guessed",
        ),
        pytest.param(
            with_selectors({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}),
            "gvirtus-demo",
            ScopeUnknown,
            id="absence-of-other-label-is-not-guessed",
        ),
        pytest.param(with_selectors(names("Near", "a")), "a", ScopeUnknown, id="bad-operator"),
        pytest.param(None, "gvirtus-demo", ScopeUnknown, id="no-configuration"),
    ],
)
def test_the_webhook_acts_only_where_its_configuration_sends_pods(
    current: dict[str, Any] | None, namespace: str, verdict: type[Exception] | None
) -> None:
    scope = Scope(configuration="gvirtus-dra-webhook")
    scope.update(current)

    if verdict is None:
        scope.check(namespace)
    else:
        with pytest.raises(verdict):
            scope.check(namespace)


def test_nothing_is_in_scope_before_the_configuration_is_read() -> None:
    with pytest.raises(ScopeUnknown, match="has not been read"):
        Scope(configuration="gvirtus-dra-webhook").check("gvirtus-demo")
