"""Shared fixtures: the test API server, short node directories, test networks, the e2e switch."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.support import manifests, netns, rbac
from tests.support.apiserver import DEFAULT_OFF, APIServer
from tests.support.processes import PluginDirs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e", action="store_true", help="run end-to-end tests against KUBECONFIG")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--e2e"):
        return
    skip = pytest.mark.skip(
        reason="end-to-end test: needs a cluster; run with --e2e and KUBECONFIG"
    )
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    """A temporary directory with a short path (unix socket paths are limited to 107 chars)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="gd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


COMPONENT_ROLES = {
    "controller": ("manifests/base/controller.yaml", "gvirtus-dra-controller"),
    "kubelet-plugin": ("manifests/base/kubelet-plugin.yaml", "gvirtus-dra-kubelet-plugin"),
    "webhook": ("manifests/base/webhook.yaml", "gvirtus-dra-webhook"),
    "labeler": ("manifests/base/labeler.yaml", "gvirtus-dra-labeler"),
    "backend-agent": ("manifests/base/backend-agent.yaml", "gvirtus-dra-backend-agent"),
}


@pytest.fixture
def apiserver(short_tmp: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[APIServer]:
    """The test API server; afterwards, every component's requests must fit its shipped RBAC.

    Unparametrized it plays 1.36 with every gate on (the captures' cluster). Parametrize
    it indirectly with a release (``"1.37"``) to play that release as installed, with
    its default gates, or with ``(release, disabled gates)``.
    """
    param = getattr(request, "param", None)
    release, disabled = ("1.36", frozenset()) if param is None else played(param)
    server = APIServer(
        tls_dir=short_tmp / "apiserver-tls",
        bookmark_interval=0.5,
        release=release,
        disabled_features=disabled,
    ).start()
    yield server
    server.stop()
    for component, (path, account) in COMPONENT_ROLES.items():
        allowed = rbac.permissions(
            manifests.load(path), account=account, namespace="gvirtus-system"
        )
        missing = rbac.denied(server.requests, component=component, allowed=allowed)
        assert missing == [], f"{path} does not let the {component} {missing}"


def played(param: str | tuple[str, frozenset[str]]) -> tuple[str, frozenset[str]]:
    """(release, disabled gates) of an ``apiserver`` parameter."""
    if isinstance(param, str):
        return param, DEFAULT_OFF[param]
    return param


@pytest.fixture
def kubeconfig(apiserver: APIServer, short_tmp: pathlib.Path) -> pathlib.Path:
    return apiserver.write_kubeconfig(short_tmp / "kubeconfig")


@pytest.fixture
def node_dirs(short_tmp: pathlib.Path) -> PluginDirs:
    return PluginDirs(short_tmp / "node")


@pytest.fixture
def network() -> Iterator[netns.Network]:
    """Network namespaces for this test alone, torn down afterwards whatever happened."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.Network() as made:
        yield made


@pytest.fixture(autouse=True, scope="session")
def _test_machine_filter_untouched() -> Iterator[None]:
    """No agent of the suite may enforce access control in the test machine's own namespace.

    An agent that does installs a table dropping traffic to its ports on this machine;
    agents enforcing it run in namespaces of their own. Should one slip through, its
    table is removed and the run fails, naming it.
    """
    yield
    nft = shutil.which("nft")
    if nft is None:
        return
    listed = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, check=False)
    if "gvirtus-dra-access" in listed.stdout:
        subprocess.run([nft, "delete", "table", "inet", "gvirtus-dra-access"], check=False)
        pytest.fail("a test left the agent's access table in the test machine's namespace")
