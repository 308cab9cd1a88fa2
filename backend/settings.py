"""Settings of ``gvirtus-dra backend-agent``."""

from __future__ import annotations

import pathlib

from pydantic import Field, field_validator, model_validator

from dra_driver import gvirtus
from dra_driver.addresses import RoutableIPv4
from dra_driver.config import (
    AbsolutePath,
    ByteQuantity,
    IPv4Address,
    NamespaceName,
    NodeName,
    Settings,
)
from dra_driver.models import AccessMode, GVirtuSLogLevel

AGENT_PORT = 9450
BACKEND_BASE_PORT = 9999


class AgentSettings(Settings):
    """Flags (and ``--config`` file keys) of the backend agent."""

    node_name: NodeName = Field(description="name of this node (downward API spec.nodeName)")
    address: RoutableIPv4 = Field(
        description="IPv4 address frontends use to reach this node's backends "
        "(downward API status.hostIP with hostNetwork)"
    )
    bind_address: IPv4Address = Field(
        "0.0.0.0", description="address the HTTP API and simulated backends listen on"
    )
    port: int = Field(AGENT_PORT, ge=1, le=65535, description="port of the HTTP API")
    backend_base_port: int = Field(
        BACKEND_BASE_PORT,
        ge=1,
        le=65535,
        description="port of GPU 0's backend; GPU i uses base + i",
    )
    gvirtus_home: AbsolutePath = Field(
        pathlib.Path("/usr/local/gvirtus"), description="GVirtuS installation"
    )
    gvirtus_backend: pathlib.Path | None = Field(
        None, description="backend executable (default: $GVIRTUS_HOME/bin/gvirtus-backend)"
    )
    plugins: str = Field(
        ",".join(gvirtus.BACKEND_PLUGINS),
        description="comma-separated CUDA plugins the backends load",
    )
    gvirtus_log_level: GVirtuSLogLevel = Field(
        GVirtuSLogLevel.INFO, description="log level of the backends"
    )
    state_dir: AbsolutePath = Field(
        pathlib.Path("/var/run/gvirtus-dra-agent"),
        description="where generated backend files are kept",
    )
    probe_interval: float = Field(
        2.0,
        gt=0,
        le=60,
        description="seconds between health and load samples (read from /proc; "
        "nothing connects to a backend)",
    )
    restart_after_samples: int = Field(
        3,
        ge=1,
        le=1000,
        description="consecutive samples a running backend must look wedged or not "
        "listening before it is restarted",
    )
    leak_restart_threshold: int = Field(
        64,
        ge=1,
        description="restart an idle backend (no frontend connected) holding this many "
        "descriptors of closed connections (CLOSE-WAIT), or half its own limit if lower",
    )
    start_grace: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="seconds a started backend may take to listen before it is judged "
        "not listening",
    )
    restart_backoff_max: float = Field(
        60.0, ge=1, le=3600, description="longest wait before restarting a failed backend"
    )
    simulate_gpus: int = Field(
        0,
        ge=0,
        le=256,
        description="simulate N GPUs, each served by a stand-in backend process, "
        "instead of NVML and GVirtuS",
    )
    simulate_open_files: int = Field(
        64,
        ge=16,
        le=1048576,
        description="open-file limit of each stand-in backend; small, so that leaks "
        "wedge it soon, as they would the real one",
    )
    simulate_model: str = Field(
        "NVIDIA H100 80GB HBM3", description="product name of simulated GPUs"
    )
    simulate_memory: ByteQuantity = Field("80Gi", description="memory of each simulated GPU")
    simulate_driver_version: str = Field(
        "580.65.06", description="driver version of simulated GPUs"
    )
    simulate_cuda_version: str = Field("12.6", description="CUDA version of simulated GPUs")
    access_control: AccessMode = Field(
        AccessMode.ON,
        description="on: only pods holding a claim on a GPU reach its backend (nftables, "
        "needs NET_ADMIN and the node's access list); off: anyone who reaches a backend "
        "port uses its GPU (warned about at start, every ten minutes and as a Node event)",
    )
    namespace: NamespaceName = Field(
        "gvirtus-system",
        description="namespace of the access lists the controller publishes "
        "(ConfigMap gvirtus-dra-access-<node>)",
    )
    kubeconfig: pathlib.Path | None = Field(
        None,
        description="kubeconfig file for reading the access list; unset means the "
        "pod's service account",
        json_schema_extra={"env_aliases": ["KUBECONFIG"]},
    )
    config: pathlib.Path | None = Field(
        None, description="YAML file with any of these settings (camelCase keys)"
    )

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, value: str) -> str:
        names = [p.strip() for p in value.split(",") if p.strip()]
        if not names or any(not n.isalnum() for n in names):
            raise ValueError("must name one or more plugins, e.g. cudart,cublas")
        return ",".join(names)

    @model_validator(mode="after")
    def _ports_fit(self) -> AgentSettings:
        if self.simulate_gpus and self.backend_base_port + self.simulate_gpus - 1 > 65535:
            raise ValueError("backend ports would run past 65535; lower --backend-base-port")
        return self

    @property
    def plugin_list(self) -> tuple[str, ...]:
        """The configured CUDA plugins."""
        return tuple(self.plugins.split(","))

    @property
    def backend_executable(self) -> pathlib.Path:
        """The ``gvirtus-backend`` to run."""
        return self.gvirtus_backend or self.gvirtus_home / "bin" / "gvirtus-backend"
