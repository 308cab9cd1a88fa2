"""CEL evaluated offline as Kubernetes evaluates it, for tests.

Two users: DRA device selectors (as the allocator sees them) and the install's
ValidatingAdmissionPolicies (as the API server's admission runs them, see
:func:`admit`).

``celpy`` parses and runs standard CEL; this adds what Kubernetes adds for device
selectors so an expression can be run against a ResourceSlice device:

* ``device.driver``, ``device.attributes[<domain>].<name>``,
  ``device.capacity[<domain>].<name>``, ``device.allowMultipleAllocations``; an
  unqualified attribute name belongs to the driver's domain, and a domain no
  attribute uses reads as an empty map (as in the API server);
* version attributes and ``semver('1.2.3')`` with ``compareTo``, ``isGreaterThan``,
  ``isLessThan``, ``major``, ``minor``, ``patch``.

Reading an attribute the device lacks raises :class:`SelectorError`: the real
allocator then fails the whole claim (see ``10-celerror-pod-get.json``). Quantities
are kept as strings; selectors here do not do arithmetic on them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, Evaluator

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+.*)?$")


class SelectorError(Exception):
    """The expression does not parse, does not yield a bool, or fails on this device."""


class Version(celtypes.StringType):
    """A semantic version value (a CEL ``semver``)."""

    @property
    def key(self) -> tuple[int, int, int]:
        match = _SEMVER.match(str(self))
        if match is None:
            raise celpy.CELEvalError(f"invalid semver {str(self)!r}")
        return int(match[1]), int(match[2]), int(match[3])


def _semver(text: celtypes.StringType) -> Version:
    version = Version(str(text))
    version.key  # noqa: B018 - validates
    return version


def _compare(a: Version, b: Version) -> celtypes.IntType:
    return celtypes.IntType((a.key > b.key) - (a.key < b.key))


FUNCTIONS = {
    "semver": _semver,
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: celtypes.BoolType(a.key > b.key),
    "isLessThan": lambda a, b: celtypes.BoolType(a.key < b.key),
    "major": lambda a: celtypes.IntType(a.key[0]),
    "minor": lambda a: celtypes.IntType(a.key[1]),
    "patch": lambda a: celtypes.IntType(a.key[2]),
}


class _Domains(celtypes.MapType):
    """Attribute domains; an unknown domain is an empty map, not an error."""

    def __getitem__(self, key: Any) -> Any:
        if key not in self:
            return celtypes.MapType({})
        return super().__getitem__(key)


@functools.lru_cache(maxsize=256)
def _program(expression: str) -> celpy.Runner:
    environment = celpy.Environment()
    try:
        ast = environment.compile(expression)
    except celpy.CELParseError as exc:
        raise SelectorError(f"syntax error in {expression!r}: {exc}") from exc
    return environment.program(ast, functions=FUNCTIONS)


def check_syntax(expression: str) -> None:
    """Raise :class:`SelectorError` unless ``expression`` parses as CEL."""
    _program(expression)


def _value(attribute: Mapping[str, Any]) -> Any:
    ((kind, value),) = attribute.items()
    return {
        "int": celtypes.IntType,
        "bool": celtypes.BoolType,
        "string": celtypes.StringType,
        "version": Version,
    }[kind](value)


def _by_domain(entries: Mapping[str, Any], driver: str, convert: Any) -> _Domains:
    domains: dict[str, dict[celtypes.StringType, Any]] = {}
    for name, value in entries.items():
        domain, _, short = name.rpartition("/")
        domains.setdefault(domain or driver, {})[celtypes.StringType(short)] = convert(value)
    return _Domains({celtypes.StringType(d): celtypes.MapType(v) for d, v in domains.items()})


def matches(expression: str, *, device: Mapping[str, Any], driver: str) -> bool:
    """Whether a ResourceSlice ``device`` of ``driver`` satisfies ``expression``.

    Raises:
        SelectorError: the expression does not parse, fails on this device, or is not a bool.
    """
    activation = {
        "device": celtypes.MapType(
            {
                celtypes.StringType("driver"): celtypes.StringType(driver),
                celtypes.StringType("attributes"): _by_domain(
                    device.get("attributes") or {}, driver, _value
                ),
                celtypes.StringType("capacity"): _by_domain(
                    device.get("capacity") or {},
                    driver,
                    lambda c: celtypes.StringType(str(c["value"])),
                ),
                celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(
                    bool(device.get("allowMultipleAllocations"))
                ),
            }
        )
    }
    try:
        result = _program(expression).evaluate(activation)
    except celpy.CELEvalError as exc:
        raise SelectorError(f"runtime error: {exc}") from exc
    if isinstance(result, celpy.CELEvalError):
        raise SelectorError(f"runtime error: {result}")
    if not isinstance(result, celtypes.BoolType):
        raise SelectorError(f"{expression!r} yields {type(result).__name__}, not bool")
    return bool(result)


# -- ValidatingAdmissionPolicies ------------------------------------------------------------
#
# A policy is run on an AdmissionRequest document (as a webhook receives it, with
# ``object`` and ``oldObject``) the way a 1.36 API server runs it: resource rules
# and operations select the request, then every match condition must be true;
# variables are computed lazily, once, when an expression first reads them; every
# validation must be true. An expression that fails at runtime (a missing field
# read without ``has()``, null ``oldObject`` on CREATE) or yields a non-bool is an
# error, which ``failurePolicy: Fail`` turns into a refusal: the verdict keeps it
# apart from a refusal by rule, so tests can insist a refusal was meant.


class _Variables(celtypes.MapType):
    """``variables``: each one evaluated on first use, then remembered."""

    def __init__(self, declared: list[Mapping[str, Any]], names: dict[str, Any]) -> None:
        super().__init__({})
        self._expressions = {v["name"]: v["expression"] for v in declared}
        self._names = {**names, "variables": self}
        self._values: dict[str, Any] = {}

    def __contains__(self, key: object) -> bool:
        return str(key) in self._expressions

    def __getitem__(self, key: Any) -> Any:
        name = str(key)
        if name not in self._expressions:
            raise KeyError(name)
        if name not in self._values:
            self._values[name] = _evaluate(self._expressions[name], self._names)
        return self._values[name]


def _tree_dump(tree: lark.Tree) -> str:
    """The ``tree_dump`` of celpy, which fails on a conditional (``a ? b : c``).

    celpy prints the expression of an error while it turns ``error && error`` or
    ``error == error`` into one error; with a conditional inside, that printing
    raised instead, and a policy that CEL evaluates fine crashed here.
    """
    try:
        return str(_celpy_tree_dump(tree))
    except IndexError:
        return "<expression with a conditional>"


_celpy_tree_dump = celpy.evaluation.tree_dump
celpy.evaluation.tree_dump = _tree_dump


class _StrictEvaluator(Evaluator):
    """celpy's evaluator with ``has()`` as the API server's CEL has it.

    celpy answers ``has(e.f)`` false whenever ``e.f`` fails, so ``has(oldObject.x)``
    on CREATE (``oldObject`` null) or ``has(a.b.c)`` with ``a.b`` missing pass here
    and fail on the real server. Here, as there, only a map lacking ``f`` is false;
    a null or missing ``e`` is an error.
    """

    def macro_has_eval(self, exprlist: lark.Tree) -> Any:
        node: Any = exprlist
        while isinstance(node, lark.Tree) and node.data != "member_dot" and len(node.children) == 1:
            node = node.children[0]
        if not isinstance(node, lark.Tree) or node.data != "member_dot":
            return CELEvalError("has() needs a field selection", TypeError, None)
        target, field = node.children
        value = self.visit(target)
        if isinstance(value, CELEvalError):
            return value
        if not isinstance(value, celtypes.MapType):
            return CELEvalError(f"has() on {type(value).__name__}: no such key", TypeError, None)
        return celtypes.BoolType(str(field) in value)

    def expr(self, tree: lark.Tree) -> Any:
        """A conditional whose condition fails fails with it (celpy would go on)."""
        if len(tree.children) == 3:
            condition = self.visit(tree.children[0])
            if isinstance(condition, CELEvalError):
                return condition
        return super().expr(tree)


class _StrictRunner(celpy.InterpretedRunner):
    def evaluate(self, context: Any) -> Any:
        return _StrictEvaluator(ast=self.ast, activation=self.new_activation()).evaluate(context)


@functools.lru_cache(maxsize=512)
def _admission_program(expression: str) -> celpy.Runner:
    environment = celpy.Environment(runner_class=_StrictRunner)
    return environment.program(environment.compile(expression))


def _evaluate(expression: str, names: Mapping[str, Any]) -> Any:
    """The value, or the :class:`celpy.CELEvalError` it failed with (as CEL keeps errors)."""
    try:
        return _admission_program(expression).evaluate(dict(names))
    except celpy.CELEvalError as exc:
        return exc


def _is_bool(value: Any) -> bool:
    """CEL yields a bool (celpy may hand back Python's own)."""
    return isinstance(value, (bool, celtypes.BoolType))


def _in(values: list[str] | None, wanted: str) -> bool:
    return values is not None and ("*" in values or wanted in values)


def _resource_matches(resources: list[str], resource: str, subresource: str) -> bool:
    """``resources`` of a rule: ``*`` is every resource, ``*/*`` every (sub)resource."""
    for entry in resources:
        name, _, sub = entry.partition("/")
        if name in ("*", resource) and sub in ("*", subresource):
            return True
    return False


def _rule_matches(rule: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    resource = request["resource"]
    scope = rule.get("scope", "*")
    namespaced = bool(request.get("namespace"))
    return (
        _in(rule.get("operations"), request["operation"])
        and _in(rule.get("apiGroups"), resource["group"])
        and _in(rule.get("apiVersions"), resource["version"])
        and _resource_matches(
            rule.get("resources") or [], resource["resource"], request.get("subResource", "")
        )
        and (scope == "*" or (scope == "Namespaced") == namespaced)
    )


def _selected(constraints: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    for selector in ("namespaceSelector", "objectSelector"):
        if constraints.get(selector):
            raise NotImplementedError(f"{selector} is not evaluated here")
    return any(_rule_matches(r, request) for r in constraints.get("resourceRules") or []) and (
        not any(_rule_matches(r, request) for r in constraints.get("excludeResourceRules") or [])
    )


@dataclass(frozen=True)
class Verdict:
    """One policy's answer to one request."""

    matched: bool
    """The policy's rules and match conditions selected the request."""
    refusals: tuple[str, ...] = ()
    """Messages of the validations that came out false."""
    errors: tuple[str, ...] = ()
    """Expressions that failed to evaluate; under ``failurePolicy: Fail`` they refuse too."""
    reasons: tuple[str, ...] = ()
    """The ``reason`` of each refusal (``Invalid`` unless the validation names one)."""

    @property
    def allowed(self) -> bool:
        return not self.refusals and not self.errors


def _message(validation: Mapping[str, Any], names: Mapping[str, Any]) -> str:
    """A refusal's message as the API server builds it, falling back as it does."""
    fallback = validation.get("message") or f"failed expression: {validation['expression']}"
    if "messageExpression" not in validation:
        return str(fallback)
    value = _evaluate(validation["messageExpression"], names)
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        return str(fallback)
    return str(value)


def admit(policy: Mapping[str, Any], request: Mapping[str, Any]) -> Verdict:
    """Run a ValidatingAdmissionPolicy's ``spec`` on an AdmissionRequest document."""
    if not _selected(policy["matchConstraints"], request):
        return Verdict(matched=False)
    names: dict[str, Any] = {
        "request": celpy.json_to_cel(
            {k: v for k, v in request.items() if k not in ("object", "oldObject")}
        ),
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
        "params": None,
        "namespaceObject": None,
    }
    names["variables"] = _Variables(policy.get("variables") or [], names)
    conditions = [
        (c["expression"], _evaluate(c["expression"], names))
        for c in policy.get("matchConditions") or []
    ]
    if any(_is_bool(v) and not v for _, v in conditions):
        return Verdict(matched=False)
    broken = tuple(f"{e}: {v!r}" for e, v in conditions if not _is_bool(v))
    if broken:
        return Verdict(matched=True, errors=broken)
    refusals, reasons, errors = [], [], []
    for validation in policy["validations"]:
        value = _evaluate(validation["expression"], names)
        if not _is_bool(value):
            errors.append(f"{validation['expression']}: {value!r}")
        elif not value:
            refusals.append(_message(validation, names))
            reasons.append(validation.get("reason", "Invalid"))
    return Verdict(True, tuple(refusals), tuple(errors), tuple(reasons))
