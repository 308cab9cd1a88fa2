"""What `kubectl apply -k manifests/` installs: every workload as the components need it.

These tests read the rendered install, not the files: probes, limits and security
contexts on every container; each component started with flags its own settings
accept; the kubelet plugin's host paths mounted where it looks for them; the
backend agents selected by the controller's own default selector; and the webhook
configured as docs/webhook.md explains. The admission policies are run on requests
in test_policies.py.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from dra_driver import cli, config
from dra_driver.controller.settings import ControllerSettings
from dra_driver.plugin.settings import PluginSettings
from tests.support import manifests, rbac, selectors

Obj = dict[str, Any]
WORKLOADS = ("Deployment", "DaemonSet")
SAMPLE_FIELDS = {
    "spec.nodeName": "worker-1",
    "metadata.uid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "metadata.name": "gvirtus-dra-controller-7d9c8-x2v4q",
    "metadata.namespace": "gvirtus-system",
    "status.hostIP": "172.18.0.3",
}


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def containers(workload: Obj) -> list[Obj]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


@pytest.mark.parametrize("install", manifests.INSTALLS)
def test_every_container_has_probes_limits_and_a_locked_down_context(install: str) -> None:
    missing = []
    for workload in workloads(manifests.render(install)):
        pod = workload["spec"]["template"]["spec"]
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources") or {}
            context = container.get("securityContext") or {}
            seccomp = (
                context.get("seccompProfile")
                or pod.get("securityContext", {}).get("seccompProfile")
                or {}
            ).get("type")
            checks = {
                "cpu and memory requests": {"cpu", "memory"}
                <= set(resources.get("requests") or {}),
                "a memory limit": "memory" in (resources.get("limits") or {}),
                "a readiness probe": "readinessProbe" in container,
                "a liveness probe": "livenessProbe" in container,
                "no privilege escalation": context.get("allowPrivilegeEscalation") is False,
                "a read-only root": context.get("readOnlyRootFilesystem") is True,
                "no capabilities": (context.get("capabilities") or {}).get("drop") == ["ALL"],
                "the runtime's seccomp profile": seccomp == "RuntimeDefault",
                "no privileged mode": not context.get("privileged"),
            }
            missing += [f"{where} lacks {what}" for what, ok in checks.items() if not ok]
    assert missing == []


@pytest.mark.parametrize("install", manifests.INSTALLS)
def test_only_the_kubelet_plugin_and_the_backend_agent_run_as_root(install: str) -> None:
    """The plugin for the kubelet's directories; the agent for NET_ADMIN, its only capability.

    A container gets an added capability only as root (Kubernetes sets no ambient
    capabilities), and the agent needs NET_ADMIN for its packet filter table.
    """
    as_root, added = [], {}
    for workload in workloads(manifests.render(install)):
        pod_context = workload["spec"]["template"]["spec"].get("securityContext") or {}
        for container in containers(workload):
            context = container.get("securityContext") or {}
            merged = {**pod_context, **context}
            if not merged.get("runAsNonRoot") or merged.get("runAsUser") == 0:
                as_root.append(workload["metadata"]["name"])
            if capabilities := (context.get("capabilities") or {}).get("add"):
                added[workload["metadata"]["name"]] = capabilities
    assert sorted(as_root) == ["gvirtus-dra-backend-agent", "gvirtus-dra-kubelet-plugin"]
    assert added == {"gvirtus-dra-backend-agent": ["NET_ADMIN"]}


def _configmap_files(objects: list[Obj], workload: Obj, root: pathlib.Path) -> dict[str, str]:
    """Write the workload's ConfigMap volumes under ``root``; mount path → local path."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes") or []}
    moved = {}
    for container in containers(workload):
        for mount in container.get("volumeMounts") or []:
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            data = manifests.pick(objects, "ConfigMap", source["name"])["data"]
            folder = root / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in data.items():
                (folder / name).write_text(text)
            moved[mount["mountPath"]] = str(folder)
    return moved


@pytest.mark.parametrize("install", manifests.INSTALLS)
def test_every_component_starts_with_settings_it_accepts(
    install: str, tmp_path: pathlib.Path
) -> None:
    objects = manifests.render(install)
    started = []
    for workload in workloads(objects):
        moved = _configmap_files(objects, workload, tmp_path / workload["metadata"]["name"])
        for container in containers(workload):
            args = list(container["args"])
            for mount, local in moved.items():
                args = [a.replace(mount, local) for a in args]
            environ = {
                e["name"]: e.get("value") or SAMPLE_FIELDS[e["valueFrom"]["fieldRef"]["fieldPath"]]
                for e in container.get("env") or []
            }
            parsed = cli.build_parser().parse_args(args)
            model = cli.COMMANDS[parsed.command].settings()
            config.load(model, args=parsed, environ=environ)  # raises on any bad setting
            started.append(parsed.command)
    assert sorted(started) == [
        "backend-agent",
        "controller",
        "kubelet-plugin",
        "labeler",
        "webhook",
    ]


def test_the_kubelet_plugin_sees_the_host_paths_where_the_kubelet_has_them() -> None:
    plugin = manifests.pick(
        manifests.render("manifests"), "DaemonSet", "gvirtus-dra-kubelet-plugin"
    )
    pod = plugin["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    defaults = PluginSettings.model_fields

    assert mounted == host, "each host path at the same path inside"
    assert set(host.values()) == {
        str(defaults["kubelet_registry_dir"].default),
        f"{defaults['kubelet_plugins_dir'].default}/gpu.gvirtus.io",
        str(defaults["cdi_root"].default),
    }
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for e in container["env"]
    }
    assert env["GVIRTUS_DRA_POD_UID"] == "metadata.uid", "pod-UID socket names for upgrades"
    assert plugin["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert pod["nodeSelector"] == {"gvirtus.io/frontend.allowed": "true"}


@pytest.mark.parametrize(
    ("install", "requirements"),
    [
        pytest.param(
            "manifests",
            {("gvirtus.io/backend.allowed", "true"), ("nvidia.com/gpu.present", "true")},
            id="gpu-nodes",
        ),
        pytest.param(
            "manifests/overlays/simulator",
            {("gvirtus.io/backend.allowed", "true")},
            id="simulator",
        ),
    ],
)
def test_backend_agents_run_on_backend_nodes_and_the_controller_finds_them(
    install: str, requirements: set[tuple[str, str]]
) -> None:
    agent = manifests.pick(manifests.render(install), "DaemonSet", "gvirtus-dra-backend-agent")
    pod = agent["spec"]["template"]
    (term,) = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    found = {(e["key"], e["values"][0]) for e in term["matchExpressions"] if e["operator"] == "In"}
    wanted = selectors.parse_labels(ControllerSettings.model_fields["agent_selector"].default)

    assert found == requirements
    assert pod["spec"]["hostNetwork"] is True
    assert selectors.labels_match(wanted, pod)


def test_each_workload_runs_as_an_account_the_install_creates() -> None:
    objects = manifests.render("manifests")
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    used = {w["spec"]["template"]["spec"]["serviceAccountName"] for w in workloads(objects)}

    assert used == accounts


def test_replicated_components_survive_losing_a_pod() -> None:
    objects = manifests.render("manifests")
    controller = manifests.pick(objects, "Deployment", "gvirtus-dra-controller")
    webhook = manifests.pick(objects, "Deployment", "gvirtus-dra-webhook")
    budget = manifests.pick(objects, "PodDisruptionBudget", "gvirtus-dra-webhook")

    assert controller["spec"]["replicas"] == webhook["spec"]["replicas"] == 2
    assert budget["spec"]["minAvailable"] == 1
    assert selectors.labels_match(
        selectors.from_label_selector(budget["spec"]["selector"]), webhook["spec"]["template"]
    )


def test_the_kubelet_plugin_may_write_nothing() -> None:
    objects = manifests.render("manifests")
    role = manifests.pick(objects, "ClusterRole", "gvirtus-dra-kubelet-plugin")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}

    assert verbs <= {"get", "list", "watch"}


def _grants(objects: list[Obj], account: str) -> list[str]:
    """What the install grants a ServiceAccount of gvirtus-system, one verb per line."""
    held = rbac.permissions(objects, account=account, namespace="gvirtus-system")
    scoped = [("cluster", r) for r in held.cluster] + [
        (namespace, r) for namespace, rules in held.namespaced.items() for r in rules
    ]
    return sorted(
        f"{where}: {verb} {group or 'core'}/{resource}"
        + (f" {','.join(rule['resourceNames'])}" if rule.get("resourceNames") else "")
        for where, rule in scoped
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


# What each component does, as its code and the RBAC audit of the suite show; a
# grant beyond it is a grant a stolen token could use. Widening a role means
# widening this table in the same change, and saying why.
LEAST_PRIVILEGE = {
    "gvirtus-dra-controller": [
        "cluster: arbitrary-node:patch resource.k8s.io/resourceclaims/driver gpu.gvirtus.io",
        "cluster: create core/events",
        "cluster: create resource.k8s.io/resourceslices",
        "cluster: delete resource.k8s.io/resourceslices",
        "cluster: get resource.k8s.io/resourceslices",
        "cluster: list core/nodes",
        "cluster: list core/pods",
        "cluster: list resource.k8s.io/devicetaintrules",
        "cluster: list resource.k8s.io/resourceclaims",
        "cluster: list resource.k8s.io/resourceslices",
        "cluster: patch resource.k8s.io/resourceclaims/status",
        "cluster: update resource.k8s.io/resourceslices",
        "cluster: watch core/nodes",
        "cluster: watch core/pods",
        "cluster: watch resource.k8s.io/devicetaintrules",
        "cluster: watch resource.k8s.io/resourceclaims",
        "cluster: watch resource.k8s.io/resourceslices",
        "gvirtus-system: create coordination.k8s.io/leases",
        "gvirtus-system: create core/configmaps",
        "gvirtus-system: get coordination.k8s.io/leases gvirtus-dra-controller",
        "gvirtus-system: list core/configmaps",
        "gvirtus-system: patch coordination.k8s.io/leases gvirtus-dra-controller",
        "gvirtus-system: patch core/configmaps",
        "gvirtus-system: watch core/configmaps",
    ],
    "gvirtus-dra-kubelet-plugin": [
        "cluster: get core/nodes",
        "cluster: get resource.k8s.io/resourceclaims",
        "cluster: list resource.k8s.io/resourceslices",
        "cluster: watch resource.k8s.io/resourceslices",
    ],
    "gvirtus-dra-labeler": [
        "cluster: list core/nodes",
        "cluster: patch core/nodes",
        "cluster: watch core/nodes",
    ],
    "gvirtus-dra-webhook": [
        "cluster: create resource.k8s.io/resourceclaimtemplates",
        "cluster: get admissionregistration.k8s.io/mutatingwebhookconfigurations"
        " gvirtus-dra-webhook",
        "cluster: get resource.k8s.io/resourceclaimtemplates",
        "cluster: list resource.k8s.io/resourceclaimtemplates",
        "cluster: patch admissionregistration.k8s.io/mutatingwebhookconfigurations"
        " gvirtus-dra-webhook",
        "cluster: watch resource.k8s.io/resourceclaimtemplates",
        "gvirtus-system: create core/secrets",
        "gvirtus-system: get core/secrets gvirtus-dra-webhook-tls",
        "gvirtus-system: update core/secrets gvirtus-dra-webhook-tls",
    ],
    "gvirtus-dra-backend-agent": [
        "gvirtus-system: list core/configmaps",
        "gvirtus-system: watch core/configmaps",
    ],
}


@pytest.mark.parametrize("account", sorted(LEAST_PRIVILEGE))
def test_each_component_holds_only_what_it_uses(account: str) -> None:
    assert _grants(manifests.render("manifests"), account) == LEAST_PRIVILEGE[account]


def test_every_account_of_the_install_is_held_to_its_least_privilege() -> None:
    accounts = {
        o["metadata"]["name"]
        for o in manifests.render("manifests")
        if o["kind"] == "ServiceAccount"
    }

    assert accounts == set(LEAST_PRIVILEGE)


def test_the_webhook_configuration_matches_what_the_webhook_serves() -> None:
    objects = manifests.render("manifests")
    configuration = manifests.pick(objects, "MutatingWebhookConfiguration")
    service = manifests.pick(objects, "Service", "gvirtus-dra-webhook")
    (hook,) = configuration["webhooks"]
    client = hook["clientConfig"]["service"]

    assert configuration["metadata"]["name"] == "gvirtus-dra-webhook"
    assert (client["name"], client["namespace"], client["path"], client["port"]) == (
        service["metadata"]["name"],
        "gvirtus-system",
        "/mutate",
        443,
    )
    assert [r["operations"] for r in hook["rules"]] == [["CREATE"]]
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] <= 10
    assert hook["objectSelector"] == {"matchLabels": {"gvirtus.io/enabled": "true"}}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"gvirtus-system", "kube-system"}


def _settings_of(objects: list[Obj], name: str, root: pathlib.Path) -> Any:
    """The settings the one container of Deployment ``name`` starts with."""
    workload = manifests.pick(objects, "Deployment", name)
    moved = _configmap_files(objects, workload, root)
    (container,) = containers(workload)
    args = list(container["args"])
    for mount, local in moved.items():
        args = [a.replace(mount, local) for a in args]
    environ = {
        e["name"]: e.get("value") or SAMPLE_FIELDS[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container.get("env") or []
    }
    parsed = cli.build_parser().parse_args(args)
    return config.load(cli.COMMANDS[parsed.command].settings(), args=parsed, environ=environ)


@pytest.mark.parametrize(
    ("install", "scheduler", "device_class"),
    [
        ("manifests", "default", "gpu.gvirtus.io"),
        ("manifests/overlays/kai", "kai", "remote.gvirtus.io"),
    ],
    ids=["default", "kai"],
)
def test_the_kai_overlay_switches_the_controller_and_the_webhooks_class(
    install: str, scheduler: str, device_class: str, tmp_path: pathlib.Path
) -> None:
    objects = manifests.render(install)
    controller = _settings_of(objects, "gvirtus-dra-controller", tmp_path / "controller")
    webhook = _settings_of(objects, "gvirtus-dra-webhook", tmp_path / "webhook")
    classes = {o["metadata"]["name"] for o in objects if o["kind"] == "DeviceClass"}

    assert controller.scheduler == scheduler
    assert controller.binding_conditions is False
    assert webhook.device_class == device_class
    assert device_class in classes, "converted pods ask for a class the install applies"
