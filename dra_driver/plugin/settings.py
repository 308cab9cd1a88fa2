"""Settings of the kubelet plugin and the paths derived from them.

Paths must be the same inside the plugin's container and on the host: the kubelet
uses the socket path from ``GetInfo`` verbatim, and container runtimes read the
``properties.json`` host paths named in CDI specs. So every directory is absolute.
"""

from __future__ import annotations

import pathlib

from pydantic import Field, field_validator, model_validator

from dra_driver import DEFAULT_DRIVER_NAME
from dra_driver.config import (
    AbsolutePath,
    DriverName,
    NodeName,
    Settings,
    dns_subdomain,
)

SOCKET_PATH_LIMIT = 107
"""Longest unix socket path the kernel (and gRPC) accepts."""


class PluginSettings(Settings):
    """Flags of ``gvirtus-dra kubelet-plugin``."""

    driver_name: DriverName = Field(DEFAULT_DRIVER_NAME, description="DRA driver name")
    node_name: NodeName = Field(
        description="name of the node this plugin serves (downward API spec.nodeName)"
    )
    kubeconfig: pathlib.Path | None = Field(
        None,
        description="kubeconfig file; unset means the pod's service account",
        json_schema_extra={"env_aliases": ["KUBECONFIG"]},
    )
    kubelet_registry_dir: AbsolutePath = Field(
        pathlib.Path("/var/lib/kubelet/plugins_registry"),
        description="directory the kubelet watches for registration sockets",
    )
    kubelet_plugins_dir: AbsolutePath = Field(
        pathlib.Path("/var/lib/kubelet/plugins"),
        description="directory holding the plugin's data directory and DRA socket",
    )
    cdi_root: AbsolutePath = Field(
        pathlib.Path("/var/run/cdi"), description="directory for CDI spec files"
    )
    pod_uid: str | None = Field(
        None,
        description="UID of this plugin's pod; set it (downward API metadata.uid) to give sockets "
        "per-pod names for seamless rolling updates (kubelet 1.33+)",
    )
    metrics_port: int = Field(
        9452, ge=0, le=65535, description="port of /metrics, /healthz and /readyz (0 disables)"
    )
    metrics_address: str = Field("0.0.0.0", description="address the metrics port binds to")
    health_interval: float = Field(
        5.0, gt=0, le=10, description="seconds between device health reports to the kubelet"
    )

    @field_validator("pod_uid")
    @classmethod
    def _pod_uid(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        return dns_subdomain(value, what="pod UID", max_length=63)

    @model_validator(mode="after")
    def _socket_paths_fit(self) -> PluginSettings:
        for path in (self.registration_socket, self.dra_socket):
            if len(str(path)) > SOCKET_PATH_LIMIT:
                raise ValueError(
                    f"socket path {path} has {len(str(path))} characters, more than the "
                    f"{SOCKET_PATH_LIMIT} a unix socket allows; use shorter kubelet directories"
                )
        return self

    @property
    def suffix(self) -> str:
        """``-<pod uid>`` for per-pod socket names, else empty."""
        return f"-{self.pod_uid}" if self.pod_uid else ""

    @property
    def data_dir(self) -> pathlib.Path:
        """The plugin's own directory, shared by all its pods on the node."""
        return self.kubelet_plugins_dir / self.driver_name

    @property
    def dra_socket(self) -> pathlib.Path:
        """The DRA service socket, named in ``GetInfo``."""
        return self.data_dir / f"dra{self.suffix}.sock"

    @property
    def registration_socket(self) -> pathlib.Path:
        """The socket the kubelet's plugin watcher finds."""
        return self.kubelet_registry_dir / f"{self.driver_name}{self.suffix}-reg.sock"

    @property
    def checkpoint_file(self) -> pathlib.Path:
        """The record of prepared claims."""
        return self.data_dir / "checkpoint.json"

    @property
    def claims_dir(self) -> pathlib.Path:
        """Per-claim files (``claims/<claim-uid>/``)."""
        return self.data_dir / "claims"

    @property
    def lock_file(self) -> pathlib.Path:
        """The cross-process lock, always taken.

        Two plugin pods overlap during a rolling update (``--pod-uid``), but a process
        can also outlive its successor's start by a moment (a slow SIGTERM, a kill the
        runtime has not reaped); an uncontended ``flock`` costs microseconds, so the
        on-disk state is never left to the hope that only one process runs.
        """
        return self.data_dir / "serialize.lock"
