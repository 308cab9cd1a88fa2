"""Settings of ``gvirtus-dra labeler``."""

from __future__ import annotations

import pathlib

from pydantic import Field

from dra_driver.config import Settings


class LabelerSettings(Settings):
    """Flags of the node labeler."""

    kubeconfig: pathlib.Path | None = Field(
        None,
        description="kubeconfig file; unset means the pod's service account",
        json_schema_extra={"env_aliases": ["KUBECONFIG"]},
    )
    metrics_port: int = Field(
        9454, ge=0, le=65535, description="port of /metrics and /healthz (0: off)"
    )
    metrics_address: str = Field("0.0.0.0", description="address the metrics port binds to")
