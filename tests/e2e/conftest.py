"""The end-to-end suite's hold on a real cluster: kubectl, the driver, and tidying up.

Run with ``make e2e`` (``pytest --e2e tests/e2e``) against the cluster in
``KUBECONFIG`` with the driver installed from ``manifests/`` (``make demo`` does
both). Without ``--e2e`` every test here is skipped; with it, a missing cluster or
driver stops the run at once with what to do.

Everything a test creates or changes is written to a ledger file before it is
done and struck off when undone, so an interrupted run names what it left, and
the next run undoes it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

Obj = dict[str, Any]
SYSTEM = "gvirtus-system"
DRIVER = "gpu.gvirtus.io"
LEDGER = pathlib.Path(os.environ.get("GVIRTUS_E2E_LEDGER", ".e2e-leftovers.json"))
WORKLOADS = (
    "daemonset/gvirtus-dra-kubelet-plugin",
    "daemonset/gvirtus-dra-backend-agent",
    "deployment/gvirtus-dra-controller",
    "deployment/gvirtus-dra-webhook",
)


class KubectlError(RuntimeError):
    """kubectl failed; the message has its stderr."""


class Kube:
    """kubectl against the cluster in KUBECONFIG, with JSON in and out."""

    def __init__(self, kubectl: str) -> None:
        self.kubectl = kubectl

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        done = subprocess.run(
            [self.kubectl, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def get(self, *args: str) -> Obj:
        parsed: Obj = json.loads(self.run("get", *args, "-o", "json"))
        return parsed

    def items(self, *args: str) -> list[Obj]:
        return list(self.get(*args).get("items") or [])

    def apply(self, *objects: Obj) -> None:
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.run("apply", "-f", "-", stdin=json.dumps(document))

    def raw(self, path: str) -> Obj:
        parsed: Obj = json.loads(self.run("get", "--raw", path))
        return parsed

    def put_raw(self, path: str, body: Obj, folder: pathlib.Path) -> None:
        file = folder / f"body-{uuid.uuid4().hex}.json"
        file.write_text(json.dumps(body))
        self.run("replace", "--raw", path, "-f", str(file))

    def exec(self, namespace: str, pod: str, *command: str, container: str | None = None) -> str:
        args = ["-n", namespace, "exec", pod]
        if container:
            args += ["-c", container]
        return self.run(*args, "--", *command)


def until(check: Callable[[], Any], *, timeout: float, what: str, every: float = 2.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(KubectlError):
            last = check()
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {last!r})")


class Ledger:
    """What this run changed in the cluster, kept on disk until it is undone."""

    def __init__(self, kube: Kube, path: pathlib.Path) -> None:
        self.kube = kube
        self.path = path
        self.entries: list[Obj] = []

    def _save(self) -> None:
        if self.entries:
            self.path.write_text(json.dumps(self.entries, indent=2))
        else:
            self.path.unlink(missing_ok=True)

    def record(self, entry: Obj) -> Obj:
        self.entries.append(entry)
        self._save()
        return entry

    def strike(self, entry: Obj) -> None:
        if entry in self.entries:
            self.entries.remove(entry)
        self._save()

    def undo(self, entry: Obj) -> None:
        """Undo one change (idempotently) and strike it off."""
        kind = entry["kind"]
        if kind == "namespace":
            self.kube.run(
                "delete", "namespace", entry["name"], "--ignore-not-found", "--wait=false"
            )
        elif kind == "node-label":
            value = entry["old"]
            change = f"{entry['key']}={value}" if value is not None else f"{entry['key']}-"
            self.kube.run("label", "node", entry["node"], change, "--overwrite")
        elif kind == "simulated-gpu":
            path = (
                f"/api/v1/namespaces/{SYSTEM}/pods/{entry['pod']}:9450/proxy/v1/simulator/gpus/"
                f"{entry['index']}"
            )
            with contextlib.suppress(KubectlError):  # the agent pod may be gone: nothing to undo
                self.kube.put_raw(path, {"listening": True}, self.path.parent)
        self.strike(entry)

    def undo_all(self) -> list[str]:
        failed = []
        for entry in reversed(list(self.entries)):
            try:
                self.undo(entry)
            except (KubectlError, subprocess.TimeoutExpired) as exc:
                failed.append(f"{entry}: {exc}")
        return failed


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Kube:
    """kubectl, once the cluster and the driver answer; otherwise the run stops with why."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.exit(
            "the end-to-end suite needs kubectl: https://kubernetes.io/docs/tasks/tools/", 2
        )
    client = Kube(kubectl)
    try:
        client.run("version", "-o", "json", timeout=20)
    except (KubectlError, subprocess.TimeoutExpired) as exc:
        pytest.exit(
            f"no cluster answers ({exc}). Point KUBECONFIG at one, or run make demo first.", 2
        )
    for workload in WORKLOADS:
        try:
            client.run("-n", SYSTEM, "rollout", "status", workload, "--timeout=120s", timeout=150)
        except (KubectlError, subprocess.TimeoutExpired) as exc:
            pytest.exit(
                f"the driver is not installed and ready ({exc}). Install it with "
                "kubectl apply -k manifests/overlays/simulator (GPU-less) or manifests/, "
                "or run make demo.",
                2,
            )
    return client


@pytest.fixture(scope="session")
def ledger(kube: Kube) -> Iterator[Ledger]:
    book = Ledger(kube, LEDGER)
    if LEDGER.exists():
        left = json.loads(LEDGER.read_text())
        print(f"\na previous run left {left}; undoing it first")
        book.entries = left
        book.undo_all()
    yield book
    failed = book.undo_all()
    if failed:
        print(f"\nthe end-to-end suite could not undo, see {LEDGER}:\n" + "\n".join(failed))


@pytest.fixture(scope="session")
def image(kube: Kube) -> str:
    """The driver's image: the cluster can pull it, and it has Python and a shell."""
    plugin = kube.get("-n", SYSTEM, "daemonset", "gvirtus-dra-kubelet-plugin")
    return str(plugin["spec"]["template"]["spec"]["containers"][0]["image"])


@pytest.fixture
def namespace(kube: Kube, ledger: Ledger) -> Iterator[str]:
    """A namespace of this test, deleted afterwards (and named in the ledger till then)."""
    name = f"gvirtus-e2e-{uuid.uuid4().hex[:6]}"
    entry = ledger.record({"kind": "namespace", "name": name})
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    ledger.undo(entry)
