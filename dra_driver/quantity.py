"""Kubernetes resource quantities for memory sizes: parse ``80Gi``, print canonically.

Only what the project needs: plain integers and the binary (``Ki`` … ``Ei``) and
decimal (``k`` … ``E``) suffixes, no fractions, no exponents.
"""

from __future__ import annotations

import re

_SUFFIXES = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def parse_bytes(value: str | int) -> int:
    """Bytes in ``value`` (``"80Gi"``, ``"1500Mi"``, ``4096``).

    Raises:
        ValueError: not a whole, non-negative quantity.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    match = _QUANTITY.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity like 80Gi, 1500Mi or 4096")
    return int(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def format_bytes(value: int) -> str:
    """The shortest exact binary form: ``85899345920`` → ``80Gi``; odd sizes stay plain."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)
