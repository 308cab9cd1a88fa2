"""The project's own YAML manifests, loaded as tests apply them.

``render`` builds a kustomization with ``kubectl kustomize`` exactly as
``kubectl apply -k`` would, so tests look at what an admin installs rather than
at the files it is made of. Without ``kubectl`` a test that renders is skipped,
saying so.
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
INSTALLS = ("manifests", "manifests/overlays/simulator", "manifests/overlays/kai", "demo/install")
"""Every kustomization an admin or the demo applies."""


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


@functools.cache
def _rendered(relative: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / relative)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {relative} failed:\n{done.stderr}")
    return done.stdout


def render(relative: str) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k <relative>`` would apply (a fresh copy)."""
    return [d for d in yaml.safe_load_all(_rendered(relative)) if d]


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The rendered ``objects`` of ``kind``, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pick(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``) among rendered ``objects``."""
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} objects of kind {kind} named {name}")
    return found[0]
