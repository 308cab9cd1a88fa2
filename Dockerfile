# syntax=docker/dockerfile:1.7
# One image for every component (`gvirtus-dra <component>`), for linux/amd64 and
# linux/arm64: `make image`, or `make image-multiarch` with buildx.
#
# Target `gpu-agent` is the backend agent for real GPU nodes: it runs
# gvirtus-backend, so it is built on a GVirtuS image (CUDA and GVirtuS inside) with
# a relocatable Python next to it: `make gpu-agent-image`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG GVIRTUS_IMAGE=gvirtus/gvirtus:cuda12.6.3-cudnn-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9

# -- build: the package and its dependencies in a virtual environment -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dra_driver dra_driver
COPY backend backend
COPY webhook webhook
COPY labeler labeler
RUN python -m venv /opt/gvirtus-dra \
 && /opt/gvirtus-dra/bin/pip install . \
 && /opt/gvirtus-dra/bin/pip uninstall --yes pip \
 && /opt/gvirtus-dra/bin/python -m compileall -q /opt/gvirtus-dra/lib \
 && /opt/gvirtus-dra/bin/gvirtus-dra --version

# -- the image: Python, the environment, nothing else ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# nft: the backend agent keeps its backends' ports closed to all but the pods
# holding claims (the simulator overlay runs the agent from this image).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="gvirtus-dra" \
      org.opencontainers.image.description="Kubernetes DRA driver for remote GPUs served by GVirtuS" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/gvirtus-dra /opt/gvirtus-dra
ENV PATH=/opt/gvirtus-dra/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default; the kubelet plugin's DaemonSet runs it as root for the
# kubelet's directories.
USER 65532:65532
ENTRYPOINT ["gvirtus-dra"]
CMD ["--help"]

# -- the backend agent on GPU nodes -----------------------------------------------------------
FROM ${UV_IMAGE} AS uv

FROM ${GVIRTUS_IMAGE} AS gpu-agent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
COPY --from=build /src /src
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_NO_CACHE=1
RUN uv python install 3.11 \
 && uv venv --python 3.11 /opt/gvirtus-dra \
 && VIRTUAL_ENV=/opt/gvirtus-dra uv pip install /src \
 && rm -rf /src /usr/local/bin/uv \
 && /opt/gvirtus-dra/bin/gvirtus-dra --version
ENV PATH=/opt/gvirtus-dra/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["gvirtus-dra"]
CMD ["backend-agent", "--help"]

# The default target is the main image.
FROM runtime
