"""Settings of ``gvirtus-dra webhook``."""

from __future__ import annotations

import pathlib

from pydantic import Field, model_validator

from dra_driver import DEFAULT_DRIVER_NAME
from dra_driver.config import DriverName, NamespaceName, Settings


class WebhookSettings(Settings):
    """Flags (and ``--config`` file keys) of the admission webhook."""

    address: str = Field("0.0.0.0", description="address the HTTPS endpoint binds to")
    port: int = Field(8443, ge=1, le=65535, description="port of the HTTPS endpoint (POST /mutate)")
    metrics_port: int = Field(
        9453, ge=0, le=65535, description="port of /metrics, /healthz, /readyz (0: off)"
    )
    namespace: NamespaceName = Field(
        "gvirtus-system", description="namespace of the webhook's Service and Secret"
    )
    service: str = Field("gvirtus-dra-webhook", description="Service the API server calls")
    secret: str = Field(
        "gvirtus-dra-webhook-tls", description="Secret holding the CA and serving certificate"
    )
    configuration: str = Field(
        "gvirtus-dra-webhook", description="MutatingWebhookConfiguration the CA is published in"
    )
    cert_file: pathlib.Path | None = Field(
        None,
        description="serving certificate file (cert-manager mode: no Secret, no CA publishing)",
    )
    key_file: pathlib.Path | None = Field(None, description="key of --cert-file")
    cert_days: int = Field(
        90, ge=2, le=3650, description="validity of self-made serving certificates"
    )
    renew_days: int = Field(
        30, ge=1, le=3649, description="renew a serving certificate this long before expiry"
    )
    reload_interval: float = Field(
        30, ge=1, le=3600, description="seconds between certificate checks"
    )
    kubeconfig: pathlib.Path | None = Field(
        None,
        description="kubeconfig file; unset means the pod's service account",
        json_schema_extra={"env_aliases": ["KUBECONFIG"]},
    )
    driver_name: DriverName = Field(
        DEFAULT_DRIVER_NAME, description="DRA driver of the converted claims"
    )
    device_class: str = Field("gpu.gvirtus.io", description="DeviceClass converted claims ask for")
    max_gpus: int = Field(
        16, ge=1, le=1024, description="most nvidia.com/gpu one container may ask for"
    )
    max_body: int = Field(
        3 * 1024 * 1024, ge=65536, description="largest AdmissionReview accepted, in bytes"
    )
    max_connections: int = Field(
        512,
        ge=1,
        le=65536,
        description="open HTTPS connections at most; more are reset at accept (~92 KiB each)",
    )
    max_connections_per_address: int = Field(
        256, ge=1, le=65536, description="open HTTPS connections at most from one client address"
    )
    request_timeout: float = Field(
        5,
        gt=0,
        le=300,
        description=(
            "seconds a new connection has for its TLS handshake and first request headers, "
            "and any request for its body"
        ),
    )
    idle_timeout: float = Field(
        30,
        gt=0,
        le=3600,
        description="seconds a kept-alive connection may wait for its next request headers",
    )
    shutdown_delay: float = Field(
        5,
        ge=0,
        le=60,
        description=(
            "seconds to keep serving after SIGTERM, not ready, while the Service stops "
            "sending requests here"
        ),
    )
    config: pathlib.Path | None = Field(
        None, description="YAML file with any of these settings (camelCase keys)"
    )

    @model_validator(mode="after")
    def _coherent(self) -> WebhookSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("--cert-file and --key-file go together")
        if self.renew_days >= self.cert_days:
            raise ValueError("--renew-days must be shorter than --cert-days")
        if self.max_connections_per_address > self.max_connections:
            raise ValueError("--max-connections-per-address cannot exceed --max-connections")
        return self

    @property
    def cert_manager(self) -> bool:
        """Whether certificates come from files (cert-manager) instead of the Secret."""
        return self.cert_file is not None
