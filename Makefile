# The two commands of the README: `make demo` (a kind cluster with the driver and
# its examples; needs docker, kind and kubectl) and `make test` (needs Python 3.11+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IMAGE ?= gvirtus-dra:0.1.0
GPU_AGENT_IMAGE ?= gvirtus-dra-gpu-agent:0.1.0
PLATFORMS ?= linux/amd64,linux/arm64

.PHONY: demo demo-down e2e image image-multiarch gpu-agent-image \
	test test-tools lint typecheck unit bench-prepare bench-controller bench-webhook protos clean

demo:
	scripts/demo.sh up

demo-down:
	scripts/demo.sh down

# Against the cluster in KUBECONFIG with the driver installed (make demo does both).
e2e: $(VENV)/.installed
	$(BIN)/pytest --e2e tests/e2e

image:
	docker build -t $(IMAGE) .

# Both architectures at once needs buildx and a registry to push to (IMAGE=registry/...).
image-multiarch:
	docker buildx build --platform $(PLATFORMS) -t $(IMAGE) --push .

gpu-agent-image:
	docker build --target gpu-agent -t $(GPU_AGENT_IMAGE) .

# Everything CI runs: a fresh venv with the package and its test tools, then lint,
# type checks and the whole test suite (e2e tests skip themselves without --e2e).
test: $(VENV)/.installed lint typecheck unit

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed test-tools
	$(BIN)/pytest

# Tests run components as separate hosts in network namespaces (ip, tc, ss: iproute2),
# and backend agents keep their packet filter there (nft: nftables). As root they
# install what is missing; without root those tests skip, saying why.
test-tools:
	@command -v ip >/dev/null && command -v tc >/dev/null && command -v ss >/dev/null && \
	command -v nft >/dev/null || \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables; \
	else \
		echo "iproute2 or nftables missing and not root: network namespace tests will skip" >&2; \
	fi

bench-prepare: $(VENV)/.installed
	$(BIN)/python -m bench.prepare

bench-controller: $(VENV)/.installed
	$(BIN)/python -m bench.controller

bench-webhook: $(VENV)/.installed
	$(BIN)/python -m bench.webhook

protos: $(VENV)/.installed
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
