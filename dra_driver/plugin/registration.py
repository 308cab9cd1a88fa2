"""Kubelet plugin registration (``pluginregistration.Registration``).

The kubelet's plugin watcher finds the registration socket, asks ``GetInfo`` (with
a one-second timeout) and reports the outcome through ``NotifyRegistrationStatus``.
It restarts the whole sequence on any failure, so both calls must be repeatable.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import grpc

from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2 as reg_pb
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from dra_driver.plugin import metrics

log = logging.getLogger(__name__)

PLUGIN_TYPE = "DRAPlugin"

SUPPORTED_SERVICES = (
    "v1.DRAPlugin",
    "v1beta1.DRAPlugin",
    "v1.DRAResourceHealth",
    "v1alpha1.DRAResourceHealth",
)
"""In order of preference: the kubelet picks the first DRA service of these it supports.

A 1.37 kubelet picks the health service from this list too, preferring v1; 1.35 and
1.36 kubelets call v1alpha1 whatever the list says, so both are served and named.
"""


class RegistrationService(reg_grpc.RegistrationServicer):
    """Tells the kubelet who we are and where the DRA service listens."""

    def __init__(self, *, driver: str, endpoint: pathlib.Path) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.registered = False
        self.last_error = ""

    async def GetInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Answer the kubelet's identification request."""
        return reg_pb.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.driver,
            endpoint=str(self.endpoint),
            supported_versions=list(SUPPORTED_SERVICES),
        )

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Record the kubelet's verdict; a rejection is logged and answered with an error."""
        self.registered = request.plugin_registered
        metrics.REGISTERED.set(1 if request.plugin_registered else 0)
        if request.plugin_registered:
            self.last_error = ""
            log.info(
                "registered with the kubelet",
                extra={"driver": self.driver, "endpoint": str(self.endpoint)},
            )
            return reg_pb.RegistrationStatusResponse()
        self.last_error = request.error or "no reason given"
        log.error("the kubelet rejected the registration: %s", self.last_error)
        await context.abort(
            grpc.StatusCode.UNKNOWN, f"failed registration process: {self.last_error}"
        )
        return reg_pb.RegistrationStatusResponse()  # not reached: abort raises
