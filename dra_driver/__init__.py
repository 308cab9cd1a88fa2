"""gvirtus-dra: a Kubernetes DRA driver for remote GPUs served by GVirtuS."""

__version__ = "0.1.0"

DEFAULT_DRIVER_NAME = "gpu.gvirtus.io"
