"""`make demo` stops at once, saying what to install, where its tools are missing.

The demo itself needs Docker, kind and a machine that can run a cluster; these
tests run the script with a PATH that lacks them (or has a Docker whose engine
does not answer) and check it fails fast with a message that says what to do.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "demo.sh"


def run(path: pathlib.Path, *args: str) -> tuple[int, str]:
    """Run the script with only ``path`` and basic tools on PATH."""
    done = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SCRIPT), *args],
        env={"PATH": f"{path}:{basic_tools(path.parent)}", "HOME": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stderr


def tools(folder: pathlib.Path, **scripts: str) -> pathlib.Path:
    """Stand-in commands that print nothing, note each call in ``calls``, and exit as told."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        tool = folder / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls(folder)}"\n{body}\n')
        tool.chmod(0o755)
    return folder


def calls(folder: pathlib.Path) -> pathlib.Path:
    return folder.parent / "calls"


def called(folder: pathlib.Path) -> list[str]:
    """The stand-ins' calls, in order: what the script did before it stopped."""
    log = calls(folder)
    return log.read_text().splitlines() if log.exists() else []


def basic_tools(root: pathlib.Path) -> pathlib.Path:
    """A folder with the few commands the script uses besides docker, kind and kubectl."""
    shadow = root / "basic"
    if not shadow.exists():
        shadow.mkdir()
        for name in ("dirname", "sed", "grep", "seq", "wc", "sleep", "tail"):
            found = shutil.which(name)
            if found:
                (shadow / name).symlink_to(found)
    return shadow


@pytest.mark.parametrize(
    ("present", "named"),
    [
        pytest.param({}, ["docker:", "kind:", "kubectl:"], id="nothing"),
        pytest.param({"docker": "exit 0", "kubectl": "exit 0"}, ["kind:"], id="no-kind"),
        pytest.param({"kind": "exit 0", "kubectl": "exit 0"}, ["docker:"], id="no-docker"),
    ],
)
def test_missing_tools_are_named_with_where_to_get_them(
    tmp_path: pathlib.Path, present: dict[str, str], named: list[str]
) -> None:
    path = tools(tmp_path / "bin", **present)

    code, stderr = run(path, "up")

    assert code == 1
    assert "install these first" in stderr
    for tool in named:
        assert tool in stderr and "https://" in stderr
    assert called(path) == [], "it stops before using any tool"


def test_a_docker_without_a_running_engine_is_reported(tmp_path: pathlib.Path) -> None:
    path = tools(tmp_path / "bin", docker="exit 1", kind="exit 0", kubectl="exit 0")

    code, stderr = run(path, "up")

    assert code == 1
    assert "its engine does not answer" in stderr and "start Docker" in stderr
    assert called(path) == ["docker info"], "it stops right after asking the engine"


def test_removing_without_kind_says_so(tmp_path: pathlib.Path) -> None:
    code, stderr = run(tools(tmp_path / "bin"), "down")

    assert code == 1
    assert "kind is not installed" in stderr


def test_the_script_passes_shellcheck() -> None:
    checker = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
    done = subprocess.run(
        [checker, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout


def test_the_demo_cluster_is_1_36_with_a_backend_frontends_and_a_spare() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "demo" / "kind.yaml").read_text())
    nodes = config["nodes"]
    roles = [n.get("labels", {}).get("demo.gvirtus.io/role") for n in nodes[1:]]

    assert [n["role"] for n in nodes] == ["control-plane", "worker", "worker", "worker"]
    assert {n["image"] for n in nodes} == {"kindest/node:v1.36.1"}
    assert roles == ["backend", "frontend", "spare"]
    assert nodes[1]["labels"]["gvirtus.io/frontend.allowed"] == "false"
    # The install refuses a kubelet that registers its Node opted in as a backend.
    assert all("gvirtus.io/backend.allowed" not in n.get("labels", {}) for n in nodes)
    assert (
        "label node -l demo.gvirtus.io/role=backend gvirtus.io/backend.allowed=true"
        in SCRIPT.read_text()
    )
    assert all(config["featureGates"].values())
    for example in (ROOT / "demo" / "examples").glob("*.yaml"):
        for document in yaml.safe_load_all(example.read_text()):
            selector = (
                document.get("spec", {}).get("nodeSelector")
                or document.get("spec", {}).get("template", {}).get("spec", {}).get("nodeSelector")
                or {}
            )
            assert selector.get("demo.gvirtus.io/role", "frontend") in roles, example.name
