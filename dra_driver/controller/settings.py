"""Settings of ``gvirtus-dra controller``: scalars as flags, the same keys in ``--config``.

The device policy (how GPUs are shared, when a backend counts as dead or
overloaded) is usually kept in a ConfigMap mounted as the YAML file; any flag or
environment variable overrides a key of the file.
"""

from __future__ import annotations

import enum
import os
import pathlib
import socket
import uuid

from pydantic import Field, field_validator, model_validator

from dra_driver import DEFAULT_DRIVER_NAME
from dra_driver.config import ByteQuantity, DriverName, NamespaceName, Settings
from dra_driver.controller.scheduler import (
    BINDING_GATE,
    CAPACITY_GATE,
    Scheduler,
    parse_feature_gates,
)
from dra_driver.quantity import parse_bytes


class Sharing(enum.StrEnum):
    """How a GPU becomes devices."""

    EXCLUSIVE = "exclusive"  # one device per GPU, one claim at a time
    SLOTS = "slots"  # K devices per GPU, memory split evenly
    CAPACITY = "capacity"  # one shareable device per GPU; claims take memory from it


class ControllerSettings(Settings):
    """Flags (and ``--config`` file keys) of the controller."""

    driver_name: DriverName = Field(DEFAULT_DRIVER_NAME, description="DRA driver name")
    namespace: NamespaceName = Field(
        "gvirtus-system",
        description="namespace of the controller, its Lease and the backend agents",
    )
    pod_name: str | None = Field(
        None, description="this replica's pod (downward API metadata.name); names it in the Lease"
    )
    kubeconfig: pathlib.Path | None = Field(
        None,
        description="kubeconfig file; unset means the pod's service account",
        json_schema_extra={"env_aliases": ["KUBECONFIG"]},
    )
    agent_selector: str = Field(
        "app.kubernetes.io/component=backend-agent,app.kubernetes.io/part-of=gvirtus-dra",
        description="label selector of backend agent pods",
    )
    agent_daemonset: str = Field(
        "gvirtus-dra-backend-agent",
        description="the DaemonSet whose pods are backend agents (others are ignored)",
    )
    agent_port: int = Field(9450, ge=1, le=65535, description="port of the agents' HTTP API")
    poll_interval: float = Field(1.0, ge=0.1, le=300, description="seconds between inventory polls")
    poll_timeout: float = Field(2.0, gt=0, le=60, description="seconds an agent has to answer")
    grace_period: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="seconds an agent may not answer (or be missing) before its GPUs count as gone",
    )
    no_execute_after: float = Field(
        120.0,
        ge=0,
        le=86400,
        description="seconds a GPU may stay unhealthy before its pods are evicted (0: never)",
    )
    sharing: Sharing = Field(Sharing.EXCLUSIVE, description="exclusive, slots or capacity")
    slots: int = Field(4, ge=2, le=64, description="devices per GPU with --sharing slots")
    capacity_default: ByteQuantity = Field(
        "8Gi", description="memory a claim takes with --sharing capacity when it asks for none"
    )
    capacity_min: ByteQuantity = Field(
        "1Gi", description="smallest memory request with --sharing capacity"
    )
    capacity_step: ByteQuantity = Field(
        "1Gi", description="memory requests are rounded up to multiples of this"
    )
    capacity_fallback: Sharing = Field(
        Sharing.EXCLUSIVE,
        description="sharing when the API server drops consumable capacity (exclusive or slots)",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="frontend connections at which a GPU counts as overloaded (0: no limit)",
    )
    max_utilization: float = Field(
        0,
        ge=0,
        le=100,
        description="GPU utilisation percent at which it is overloaded (0: no limit)",
    )
    lease_name: str = Field(
        "gvirtus-dra-controller", description="Lease electing the active replica"
    )
    lease_duration: float = Field(
        15, ge=2, le=600, description="seconds a Lease is valid without renewal"
    )
    renew_deadline: float = Field(
        10, ge=1, le=600, description="seconds the leader retries renewing"
    )
    retry_period: float = Field(2, ge=0.2, le=60, description="seconds between Lease attempts")
    scheduler: Scheduler = Field(
        Scheduler.DEFAULT,
        description=(
            "the scheduler that allocates from the pools: default (kube-scheduler) or kai "
            "(KAI-Scheduler: pools carry only what its allocator acts on; docs/kai-scheduler.md)"
        ),
    )
    kai_feature_gates: str = Field(
        "",
        description=(
            "with --scheduler kai, the --feature-gates value KAI-Scheduler was given "
            "(SchedulingShard spec.args); DRADeviceTaints=true brings taints back, "
            "DRAConsumableCapacity=true allows --sharing capacity"
        ),
    )
    binding_conditions: bool = Field(
        False,
        description=(
            "publish devices with binding conditions, so the scheduler binds a pod only "
            "after its agent confirms the backend (costs about 5 s per pod start: the "
            "scheduler checks them every 5 s)"
        ),
    )
    binds_to_node: bool = Field(
        False,
        description="with binding conditions, pin each allocation to the node the pod is bound to",
    )
    binding_timeout: float = Field(
        60,
        ge=1,
        le=590,
        description=(
            "seconds a claim may wait for its backend to be confirmed before it gets the "
            "failure condition (the scheduler itself gives up after 600)"
        ),
    )
    access_node_addresses: bool = Field(
        False,
        description=(
            "also admit to a backend the node address of each pod holding a claim on it, "
            "for network plugins that masquerade pod traffic to other nodes' addresses "
            "(kind's kindnet does); every process on such a node then reaches that GPU"
        ),
    )
    status_concurrency: int = Field(16, ge=1, le=256, description="claim status writes in flight")
    write_concurrency: int = Field(16, ge=1, le=256, description="ResourceSlice writes in flight")
    poll_concurrency: int = Field(256, ge=1, le=4096, description="inventory polls in flight")
    metrics_port: int = Field(
        9451, ge=0, le=65535, description="port of /metrics and /healthz (0: off)"
    )
    metrics_address: str = Field("0.0.0.0", description="address the metrics port binds to")
    config: pathlib.Path | None = Field(
        None, description="YAML file with any of these settings (camelCase keys)"
    )

    @field_validator("capacity_fallback")
    @classmethod
    def _fallback(cls, value: Sharing) -> Sharing:
        if value is Sharing.CAPACITY:
            raise ValueError("must be exclusive or slots")
        return value

    @field_validator("kai_feature_gates")
    @classmethod
    def _kai_feature_gates(cls, value: str) -> str:
        parse_feature_gates(value)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> ControllerSettings:
        if self.renew_deadline >= self.lease_duration:
            raise ValueError("--renew-deadline must be shorter than --lease-duration")
        if self.retry_period * 1.2 >= self.renew_deadline:
            raise ValueError("--retry-period must be well below --renew-deadline")
        if parse_bytes(self.capacity_default) < parse_bytes(self.capacity_min):
            raise ValueError("--capacity-default must be at least --capacity-min")
        self._fits_the_scheduler()
        return self

    def _fits_the_scheduler(self) -> None:
        """Refuse what the chosen scheduler would silently ignore or get wrong."""
        if self.scheduler is Scheduler.DEFAULT:
            if self.kai_feature_gates.strip():
                raise ValueError("--kai-feature-gates applies only with --scheduler kai")
            return
        if self.binding_conditions or self.binds_to_node:
            raise ValueError(
                "--binding-conditions and --binds-to-node must be false with --scheduler kai: "
                "KAI-Scheduler v0.17.0 never allocates a device that has binding conditions, "
                f"and no KAI binder waits for them (even with {BINDING_GATE}=true)"
            )
        if self.sharing is Sharing.CAPACITY and not self.kai_gates.get(CAPACITY_GATE):
            raise ValueError(
                "--sharing capacity needs a KAI-Scheduler that passes "
                f"{CAPACITY_GATE}=true to its allocator (v0.17.0 gives each device to one "
                "claim, so capacity sharing would quietly become exclusive): use --sharing "
                f"slots, or add {CAPACITY_GATE}=true to --kai-feature-gates if your KAI "
                "has it in its SchedulingShard spec.args feature-gates"
            )

    @property
    def kai_gates(self) -> dict[str, bool]:
        """The feature gates KAI-Scheduler passes to its allocator, as the admin told us."""
        return parse_feature_gates(self.kai_feature_gates)

    @property
    def identity(self) -> str:
        """This replica's name in the Lease: unique even when two share a pod name."""
        return f"{self.pod_name or socket.gethostname()}_{_INSTANCE}"


_INSTANCE = uuid.uuid4().hex[:8] + f"-{os.getpid()}"
