"""Label and field selectors as the API server parses and applies them.

Label selectors support the full grammar components use: ``k``, ``!k``, ``k=v``,
``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``. Field selectors support
``=``, ``==`` and ``!=`` on the fields a resource declares; any other field is the
API server's 400 ``field label not supported``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """The selector does not parse, or names an unsupported field."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !exists, =, !=, in, notin
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # != and notin also match objects without the key, as in Kubernetes.
        return not present or value not in self.values


_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s=!(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_labels(text: str | None) -> list[Requirement]:
    """Parse a label selector; an empty one matches everything."""
    requirements = []
    for part in _split_top_level(text or ""):
        if match := _SET.match(part):
            values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(Requirement(match.group(1), match.group(2), values))
        elif match := _EQ.match(part):
            op = "=" if match.group(2) in ("=", "==") else "!="
            requirements.append(Requirement(match.group(1), op, (match.group(3),)))
        elif match := _EXISTS.match(part):
            requirements.append(
                Requirement(match.group(2), "!exists" if match.group(1) else "exists")
            )
        else:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
    return requirements


_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}


def from_label_selector(selector: Mapping[str, Any] | None) -> list[Requirement]:
    """The requirements of a structured ``LabelSelector`` (matchLabels, matchExpressions)."""
    selector = selector or {}
    requirements = [
        Requirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()
    ]
    for expression in selector.get("matchExpressions") or []:
        op = _OPERATORS.get(expression.get("operator", ""))
        if op is None:
            raise SelectorError(
                f"{expression.get('operator')!r} is not a valid label selector operator"
            )
        requirements.append(
            Requirement(expression["key"], op, tuple(expression.get("values") or ()))
        )
    return requirements


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


FieldGetter = Callable[[Mapping[str, Any]], str | None]


def parse_fields(
    text: str | None, *, supported: Mapping[str, FieldGetter]
) -> list[tuple[FieldGetter, bool, str]]:
    """Parse a field selector into (getter, equal?, value) terms."""
    terms = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        match = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise SelectorError(f"invalid field selector: {part.strip()!r}")
        key, op, value = match.groups()
        if key not in supported:
            raise SelectorError(f"field label not supported: {key}")
        terms.append((supported[key], op != "!=", value))
    return terms


def fields_match(terms: list[tuple[FieldGetter, bool, str]], obj: Mapping[str, Any]) -> bool:
    return all(
        (getter(obj) or "") == value if equal else (getter(obj) or "") != value
        for getter, equal, value in terms
    )
