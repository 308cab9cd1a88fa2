"""Flags beat environment twins, which beat defaults; bad values stop the start with a reason."""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import pytest

from dra_driver.config import ConfigError, add_flags, load
from dra_driver.plugin.settings import PluginSettings


def settings(argv: list[str], env: dict[str, str]) -> PluginSettings:
    parser = argparse.ArgumentParser()
    add_flags(parser, PluginSettings)
    return load(PluginSettings, args=parser.parse_args(argv), environ=env)


def test_defaults_are_the_kubelets_paths() -> None:
    s = settings(["--node-name", "worker-1"], {})
    assert s.driver_name == "gpu.gvirtus.io"
    assert s.registration_socket == pathlib.Path(
        "/var/lib/kubelet/plugins_registry/gpu.gvirtus.io-reg.sock"
    )
    assert s.dra_socket == pathlib.Path("/var/lib/kubelet/plugins/gpu.gvirtus.io/dra.sock")
    assert s.cdi_root == pathlib.Path("/var/run/cdi")
    assert s.checkpoint_file == pathlib.Path(
        "/var/lib/kubelet/plugins/gpu.gvirtus.io/checkpoint.json"
    )
    assert s.lock_file == pathlib.Path("/var/lib/kubelet/plugins/gpu.gvirtus.io/serialize.lock")
    assert s.kubeconfig is None


def test_pod_uid_gives_per_pod_sockets_sharing_the_file_lock() -> None:
    s = settings(
        ["--node-name", "w"], {"GVIRTUS_DRA_POD_UID": "9d1d7a2e-0000-0000-0000-000000000000"}
    )
    assert (
        s.registration_socket.name == "gpu.gvirtus.io-9d1d7a2e-0000-0000-0000-000000000000-reg.sock"
    )
    assert s.dra_socket.name == "dra-9d1d7a2e-0000-0000-0000-000000000000.sock"
    assert s.lock_file == pathlib.Path("/var/lib/kubelet/plugins/gpu.gvirtus.io/serialize.lock")


@pytest.mark.parametrize(
    ("argv", "env", "field", "value"),
    [
        ([], {"GVIRTUS_DRA_NODE_NAME": "from-env"}, "node_name", "from-env"),
        (
            ["--node-name", "from-flag"],
            {"GVIRTUS_DRA_NODE_NAME": "from-env"},
            "node_name",
            "from-flag",
        ),
        (
            ["--node-name", "n"],
            {"KUBECONFIG": "/k/config"},
            "kubeconfig",
            pathlib.Path("/k/config"),
        ),
        (
            ["--node-name", "n"],
            {"GVIRTUS_DRA_KUBECONFIG": "/a", "KUBECONFIG": "/b"},
            "kubeconfig",
            pathlib.Path("/a"),
        ),
        (["--node-name", "n"], {"GVIRTUS_DRA_METRICS_PORT": "0"}, "metrics_port", 0),
        (["--node-name", "n"], {"GVIRTUS_DRA_POD_UID": ""}, "pod_uid", None),
    ],
    ids=[
        "env",
        "flag-beats-env",
        "standard-kubeconfig",
        "own-env-beats-standard",
        "metrics-off",
        "empty-env-is-unset",
    ],
)
def test_precedence(argv: list[str], env: dict[str, str], field: str, value: object) -> None:
    assert getattr(settings(argv, env), field) == value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--node-name (env GVIRTUS_DRA_NODE_NAME): is required"),
        (["--node-name", "Worker_1"], "'Worker_1' is not a valid node name"),
        (["--node-name", "n", "--driver-name", "GPU.example"], "not a valid driver name"),
        (["--node-name", "n", "--driver-name", "a" * 64], "not a valid driver name"),
        (
            ["--node-name", "n", "--cdi-root", "run/cdi"],
            "--cdi-root (env GVIRTUS_DRA_CDI_ROOT): must be an absolute path",
        ),
        (["--node-name", "n", "--metrics-port", "http"], "--metrics-port"),
        (["--node-name", "n", "--health-interval", "30"], "--health-interval"),
        (["--node-name", "n", "--log-format", "xml"], "--log-format"),
        (
            ["--node-name", "n", "--kubelet-plugins-dir", "/" + "p" * 100],
            "more than the 107 a unix socket allows",
        ),
    ],
    ids=[
        "node-required",
        "bad-node",
        "upper-case-driver",
        "long-driver",
        "relative-dir",
        "port-not-int",
        "health-too-slow",
        "bad-log-format",
        "socket-too-long",
    ],
)
def test_bad_settings_name_the_flag_and_the_fix(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(argv, {})
    assert message in str(caught.value)


def test_invalid_settings_exit_2_before_starting_anything(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dra_driver", "kubelet-plugin", "--kubelet-plugins-dir", "relative"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "--node-name (env GVIRTUS_DRA_NODE_NAME): is required" in result.stderr
    assert (
        "--kubelet-plugins-dir (env GVIRTUS_DRA_KUBELET_PLUGINS_DIR): must be an absolute path"
        in result.stderr
    )
    assert list(tmp_path.iterdir()) == []
