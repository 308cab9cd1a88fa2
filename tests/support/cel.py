"""DRA device selectors evaluated offline: CEL as the allocator sees it, for tests.

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
from typing import Any

import celpy
from celpy import celtypes

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
