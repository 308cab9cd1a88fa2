"""The container image's recipe, checked without Docker: what it copies and installs.

The image is ``pip install .`` of the repository's packages (Dockerfile), so the
wheel built from the same sources must hold every module of every component and
the ``gvirtus-dra`` command, and the Dockerfile must copy exactly those packages.
Building and running the image itself needs Docker (``make image``).
"""

from __future__ import annotations

import configparser
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("dra_driver", "backend", "webhook", "labeler")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("gvirtus_dra-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_every_module_of_every_component(wheel: zipfile.ZipFile) -> None:
    sources = {
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.suffix in (".py", ".pyi", ".typed") and "__pycache__" not in p.parts
    }
    held = set(wheel.namelist())

    assert sources - held == set()
    assert not [n for n in held if n.startswith("tests/")], "tests stay out of the image"


def test_the_wheel_installs_the_gvirtus_dra_command(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    parsed = configparser.ConfigParser()
    parsed.read_string(wheel.read(entry_points).decode())

    assert dict(parsed["console_scripts"]) == {"gvirtus-dra": "dra_driver.cli:main"}


def test_the_dockerfile_copies_the_packages_and_the_context_lets_it() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().split()
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, flags=re.MULTILINE))

    assert copied == {"pyproject.toml", *PACKAGES}
    assert {f"!{p}/" for p in PACKAGES} | {"!pyproject.toml", "!README.md"} <= set(ignore)
    assert "USER 65532:65532" in dockerfile
    assert 'ENTRYPOINT ["gvirtus-dra"]' in dockerfile
