#!/usr/bin/env bash
# `make demo`: a kind cluster with the driver installed and its examples run.
# `make demo-down`: the cluster removed. Needs docker (with a running engine), kind
# and kubectl; nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-gvirtus-dra}
IMAGE=gvirtus-dra:demo
NS=gvirtus-demo
K=(kubectl --context "kind-${CLUSTER}")

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
fail() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }
indent() { sed 's/^/    /'; }

need() {
    local missing=()
    command -v docker >/dev/null 2>&1 || missing+=("docker: https://docs.docker.com/engine/install/")
    command -v kind >/dev/null 2>&1 || missing+=("kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation")
    command -v kubectl >/dev/null 2>&1 || missing+=("kubectl: https://kubernetes.io/docs/tasks/tools/")
    if ((${#missing[@]})); then
        printf 'demo: install these first, then run make demo again:\n' >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
    docker info >/dev/null 2>&1 ||
        fail "docker is installed but its engine does not answer (docker info failed): start Docker, or give this user access to it"
}

diagnose() {
    say "something did not come up; what the cluster says"
    "${K[@]}" get pods -A -o wide | indent || true
    "${K[@]}" -n "$NS" get events --sort-by=.lastTimestamp | tail -20 | indent || true
    "${K[@]}" -n gvirtus-system logs deploy/gvirtus-dra-controller --tail=20 | indent || true
}

wait_ready() { # wait_ready <pod>...
    local pod
    for pod in "$@"; do
        "${K[@]}" -n "$NS" wait --for=condition=Ready "pod/$pod" --timeout=180s >/dev/null ||
            { diagnose; fail "pod $pod did not become Ready"; }
    done
}

show() { # show <pod>: what it printed, and which backend its claim is bound to
    local pod=$1 claim
    note "pod $pod on node $("${K[@]}" -n "$NS" get pod "$pod" -o jsonpath='{.spec.nodeName}'):"
    "${K[@]}" -n "$NS" logs "$pod" | indent
    for claim in $("${K[@]}" -n "$NS" get pod "$pod" -o jsonpath='{.status.resourceClaimStatuses[*].resourceClaimName}'); do
        note "claim $claim: $("${K[@]}" -n "$NS" get resourceclaim "$claim" -o jsonpath='{range .status.devices[*]}{.pool}/{.device} {.conditions[0].type}={.conditions[0].status} ({.conditions[0].reason}) {.data.backendAddress}:{.data.backendPort}{"\n"}{end}')"
    done
}

install() {
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        say "kind cluster $CLUSTER exists; using it"
    else
        say "creating the kind cluster $CLUSTER (Kubernetes 1.36, one backend, two frontends)"
        kind create cluster --config demo/kind.yaml --name "$CLUSTER" --wait 180s
    fi
    # An admin opts a node in as a backend; a node may not do it itself.
    "${K[@]}" label node -l demo.gvirtus.io/role=backend gvirtus.io/backend.allowed=true --overwrite >/dev/null
    say "building the image $IMAGE and loading it into the nodes"
    docker build -t "$IMAGE" .
    kind load docker-image "$IMAGE" --name "$CLUSTER"
    say "installing the driver (kubectl apply -k demo/install)"
    "${K[@]}" apply -k demo/install | indent
    # The labeler first: the plugin's DaemonSet selects the nodes it labels.
    for workload in deployment/gvirtus-dra-labeler daemonset/gvirtus-dra-kubelet-plugin \
        daemonset/gvirtus-dra-backend-agent deployment/gvirtus-dra-controller deployment/gvirtus-dra-webhook; do
        "${K[@]}" -n gvirtus-system rollout restart "$workload" >/dev/null # pick up a rebuilt image
        "${K[@]}" -n gvirtus-system rollout status "$workload" --timeout=240s ||
            { diagnose; fail "$workload did not roll out"; }
        if [[ $workload == deployment/gvirtus-dra-labeler ]]; then
            for _ in $(seq 30); do
                [[ -z $("${K[@]}" get nodes -l '!gvirtus.io/frontend.allowed' -o name) ]] && break
                sleep 1
            done
        fi
    done
    say "waiting for the backend's GPUs to be published"
    for _ in $(seq 60); do
        "${K[@]}" get resourceslices -l app.kubernetes.io/managed-by=gvirtus-dra-controller -o name | grep -q . && break
        sleep 2
    done
    "${K[@]}" get resourceslices -o custom-columns='SLICE:.metadata.name,POOL:.spec.pool.name,DEVICES:.spec.devices[*].name' | indent
}

examples() {
    local spare
    spare=$("${K[@]}" get nodes -l demo.gvirtus.io/role=spare -o jsonpath='{.items[0].metadata.name}')
    "${K[@]}" label node "$spare" gvirtus.io/backend.allowed=false --overwrite >/dev/null
    "${K[@]}" delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
    "${K[@]}" apply -f demo/examples/00-namespace.yaml >/dev/null
    "${K[@]}" -n "$NS" create configmap show-gpu --from-file=demo/show-gpu.py >/dev/null

    say "1. a pod with a ResourceClaimTemplate"
    "${K[@]}" apply -f demo/examples/01-template.yaml | indent
    wait_ready template-pod
    show template-pod
    "${K[@]}" -n "$NS" delete pod template-pod --wait=true >/dev/null

    say "2. two pods sharing one claim, on two nodes"
    "${K[@]}" apply -f demo/examples/02-shared-claim.yaml | indent
    wait_ready shared-a shared-b
    show shared-a
    show shared-b
    "${K[@]}" -n "$NS" delete pod shared-a shared-b --wait=true >/dev/null
    "${K[@]}" -n "$NS" delete resourceclaim shared-gpu --wait=true >/dev/null

    say "3. a pod that selects its GPU by model"
    "${K[@]}" apply -f demo/examples/03-by-model.yaml | indent
    wait_ready by-model-pod
    show by-model-pod
    "${K[@]}" -n "$NS" delete pod by-model-pod --wait=true >/dev/null

    say "4. a pod written for nvidia.com/gpu, converted by the webhook"
    "${K[@]}" apply -f demo/examples/04-legacy.yaml | indent
    wait_ready legacy-pod
    note "stored as: $("${K[@]}" -n "$NS" get pod legacy-pod -o jsonpath='resourceClaims={.spec.resourceClaims} annotations={.metadata.annotations}')"
    show legacy-pod
    "${K[@]}" -n "$NS" delete pod legacy-pod --wait=true >/dev/null

    say "5. three pods for two GPUs: one waits until a backend is added"
    "${K[@]}" apply -f demo/examples/05-no-room.yaml | indent
    local running pending
    for _ in $(seq 90); do
        running=$("${K[@]}" -n "$NS" get pods -l demo.gvirtus.io/example=05 --field-selector=status.phase=Running -o name | wc -l)
        pending=$("${K[@]}" -n "$NS" get pods -l demo.gvirtus.io/example=05 --field-selector=status.phase=Pending -o name | wc -l)
        [[ $running -eq 2 && $pending -eq 1 ]] && break
        sleep 2
    done
    [[ $running -eq 2 && $pending -eq 1 ]] || { diagnose; fail "expected 2 Running and 1 Pending pods"; }
    "${K[@]}" -n "$NS" get pods -l demo.gvirtus.io/example=05 -o wide | indent
    local waiting
    waiting=$("${K[@]}" -n "$NS" get pods -l demo.gvirtus.io/example=05 --field-selector=status.phase=Pending -o jsonpath='{.items[0].metadata.name}')
    note "why $waiting waits: $("${K[@]}" -n "$NS" get pod "$waiting" -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')"
    note "adding a backend: kubectl label node $spare gvirtus.io/backend.allowed=true"
    "${K[@]}" label node "$spare" gvirtus.io/backend.allowed=true --overwrite >/dev/null
    wait_ready "$waiting"
    show "$waiting"
    "${K[@]}" -n "$NS" get pods -l demo.gvirtus.io/example=05 -o wide | indent

    say "done"
    note "The cluster stays up (context kind-$CLUSTER). Look around:"
    note "  kubectl get resourceslices; kubectl -n $NS get resourceclaims -o yaml"
    note "  make e2e      runs the end-to-end suite against it"
    note "  make demo-down removes it"
}

case "${1:-up}" in
up)
    need
    install
    examples
    ;;
down)
    command -v kind >/dev/null 2>&1 || fail "kind is not installed, so there is no demo cluster to remove"
    kind delete cluster --name "$CLUSTER"
    ;;
*)
    fail "usage: $0 [up|down]"
    ;;
esac
