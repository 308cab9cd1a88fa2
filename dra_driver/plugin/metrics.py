"""Prometheus metrics of the kubelet plugin.

Names follow the project's ``gvirtus_dra_`` prefix; counters are created with every
``result`` label value at zero, so dashboards and alerts see the series before the
first failure happens.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 45)

PREPARE_TOTAL = Counter(
    "gvirtus_dra_prepare_claims_total", "Claims prepared, by result.", ["result"]
)
PREPARE_SECONDS = Histogram(
    "gvirtus_dra_prepare_claim_duration_seconds",
    "Time to prepare one claim (its share of the NodePrepareResources call), by result.",
    ["result"],
    buckets=_BUCKETS,
)
UNPREPARE_TOTAL = Counter(
    "gvirtus_dra_unprepare_claims_total", "Claims unprepared, by result.", ["result"]
)
UNPREPARE_SECONDS = Histogram(
    "gvirtus_dra_unprepare_claim_duration_seconds",
    "Time to unprepare one claim, by result.",
    ["result"],
    buckets=_BUCKETS,
)
GRPC_SECONDS = Histogram(
    "gvirtus_dra_grpc_operations_duration_seconds",
    "Duration of gRPC calls the plugin served, by method and status code.",
    ["method_name", "grpc_status_code"],
    buckets=_BUCKETS,
)
REGISTERED = Gauge(
    "gvirtus_dra_kubelet_registered",
    "1 when the kubelet confirmed the plugin's registration, 0 otherwise.",
)

for _result in ("success", "error"):
    PREPARE_TOTAL.labels(_result)
    UNPREPARE_TOTAL.labels(_result)


def observe_prepare(*, error: bool, seconds: float) -> None:
    """Count one prepared claim and its duration."""
    result = "error" if error else "success"
    PREPARE_TOTAL.labels(result).inc()
    PREPARE_SECONDS.labels(result).observe(seconds)


def observe_unprepare(*, error: bool, seconds: float) -> None:
    """Count one unprepared claim and its duration."""
    result = "error" if error else "success"
    UNPREPARE_TOTAL.labels(result).inc()
    UNPREPARE_SECONDS.labels(result).observe(seconds)
