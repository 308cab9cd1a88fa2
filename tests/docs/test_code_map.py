"""The docs name real code: every dotted name they quote resolves to a module or object.

``docs/architecture.md`` maps the data flow to functions, and each component page
says under its sections which code does that ("Code: ..."). A rename that forgets
the docs fails here instead of sending a reader to nothing.
"""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).parents[2] / "docs"
QUOTED = re.compile(r"`((?:dra_driver|backend|webhook|labeler)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")
PAGES = sorted(DOCS.glob("*.md"))


def resolves(name: str) -> bool:
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_quoted_name_is_real_code(page: pathlib.Path) -> None:
    names = sorted(set(QUOTED.findall(page.read_text())))

    assert [name for name in names if not resolves(name)] == []


def test_the_architecture_page_and_every_component_page_name_code() -> None:
    for name in ("architecture", "kubelet-plugin", "controller", "backend-agent", "webhook"):
        text = (DOCS / f"{name}.md").read_text()
        assert "Code: `" in text, f"docs/{name}.md names no code"
        assert QUOTED.search(text)
