"""The project's own YAML manifests, loaded as tests apply them."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(relative: str) -> list[dict[str, Any]]:
    """Every document of ``<repository>/<relative>``."""
    with (ROOT / relative).open() as handle:
        return [d for d in yaml.safe_load_all(handle) if d]


def find(relative: str, kind: str, name: str | None = None) -> dict[str, Any]:
    """The one document of ``kind`` (and ``name``) in the file."""
    found = [
        d
        for d in load(relative)
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise LookupError(f"{relative}: {len(found)} documents of kind {kind} named {name}")
    return found[0]
