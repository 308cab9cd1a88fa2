"""The namespaces the webhook acts in: those its own MutatingWebhookConfiguration selects.

The API server sends a review only for a namespace the configuration's
``namespaceSelector`` matches, but anyone who reaches the port can post a review
naming any namespace, and the webhook may create templates everywhere. So the
webhook reads its configuration (it may already read it to publish its CA) and
evaluates the selectors itself: a review for a namespace the configuration leaves
out creates nothing and converts nothing.

A selector is evaluated on the one label the webhook knows without reading the
Namespace: ``kubernetes.io/metadata.name``, which the API server sets to the
namespace's name and nobody can change. Reading Namespaces would need a permission
the shipped selector never uses, so a selector on any other label is not guessed
at: the webhook refuses to convert until the selector is expressed by name (fail
closed, with a message saying so). Until the configuration has been read, or while
it does not exist, nothing is converted either.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NAME_LABEL = "kubernetes.io/metadata.name"
Obj = dict[str, Any]


class OutOfScope(Exception):  # noqa: N818 - a verdict, not a failure
    """The configuration leaves this namespace out; the API server never sends its pods."""


class ScopeUnknown(Exception):  # noqa: N818 - a state the message explains
    """The webhook cannot tell whether the configuration covers a namespace."""


class Scope:
    """The ``namespaceSelector`` of every webhook in the configuration, kept current."""

    def __init__(self, *, configuration: str) -> None:
        self.configuration = configuration
        self._selectors: list[Obj] | None = None

    def update(self, current: Obj | None) -> None:
        """Use the selectors of ``current`` (``None``: the configuration does not exist)."""
        webhooks = current.get("webhooks") if current is not None else None
        if not isinstance(webhooks, list):
            self._selectors = None
            return
        self._selectors = [
            (w.get("namespaceSelector") or {}) if isinstance(w, dict) else {} for w in webhooks
        ]

    def check(self, namespace: str) -> None:
        """Return if some webhook of the configuration selects ``namespace``.

        Raises:
            OutOfScope: no webhook selects it.
            ScopeUnknown: the configuration is not known, or selects by other labels.
        """
        if self._selectors is None:
            raise ScopeUnknown(
                f"the MutatingWebhookConfiguration {self.configuration} has not been read "
                "(it may not exist yet)"
            )
        labels = {NAME_LABEL: namespace}
        if not any(selects(s, labels=labels) for s in self._selectors):
            raise OutOfScope(f"the configuration {self.configuration} excludes {namespace}")


def selects(selector: Obj, *, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches ``labels``, all of which the caller knows.

    Raises:
        ScopeUnknown: the selector asks about a label not in ``labels`` (its value
            there is unknown, not absent) or is malformed.
    """
    if not isinstance(selector, dict):
        raise ScopeUnknown("a namespaceSelector is not an object")
    matched = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(matched, dict) or not isinstance(expressions, list):
        raise ScopeUnknown("a namespaceSelector is malformed")
    requirements = [
        {"key": k, "operator": "In", "values": [v]} for k, v in matched.items()
    ] + expressions
    return all(_meets(r, labels=labels) for r in requirements)


def _meets(requirement: Any, *, labels: dict[str, str]) -> bool:
    key = requirement.get("key") if isinstance(requirement, dict) else None
    if key not in labels:
        raise ScopeUnknown(
            f"the namespaceSelector asks about the label {key!r}; the webhook checks namespaces "
            f"only by {NAME_LABEL} (list the namespaces by name instead)"
        )
    operator, values = requirement.get("operator"), requirement.get("values") or []
    if operator == "In":
        return labels[key] in values
    if operator == "NotIn":
        return labels[key] not in values
    if operator == "Exists":
        return True
    if operator == "DoesNotExist":
        return False
    raise ScopeUnknown(f"the namespaceSelector has an unknown operator {operator!r}")
