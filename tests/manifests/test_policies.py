"""The install's admission policies, run on requests shaped like a 1.36 API server's.

RBAC cannot say "only slices of this driver" or "only these labels", so the
install says it with ValidatingAdmissionPolicies (docs/security.md). Each policy's
CEL is run here (``tests/support/cel.py``) on AdmissionRequest documents shaped
like the captured one (``08-admissionreview-*``): userInfo as each authenticator
fills it, ``oldObject`` null on CREATE, ``object`` null on DELETE, objects shaped
like the captured slice and node. Every identity that matters asks: the
controller, the garbage collector, a node's kubelet, the labeler, the kubelet
plugin and an admin. A refusal must come from a rule, never from an expression
that failed to evaluate (which ``failurePolicy: Fail`` would also turn into a
refusal, for every request alike).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import jsonpatch
import pytest

from labeler import labels as labeler_labels
from tests.support import cel, manifests, objects

Obj = dict[str, Any]
DRIVER = "gpu.gvirtus.io"
OTHER_DRIVER = "gpu.example.com"

SLICES_POLICY = "gvirtus-dra-slices-from-controller-only"
CONTROLLER_POLICY = "gvirtus-dra-controller-scope"
LABELER_POLICY = "gvirtus-dra-labeler-scope"
NODE_POLICY = "gvirtus-dra-backend-opt-in-by-admin"
PLUGIN_POLICY = "gvirtus-dra-kubelet-plugin-read-only"
ACCESS_POLICY = "gvirtus-dra-access-lists-from-controller-only"
POLICIES = (
    SLICES_POLICY,
    CONTROLLER_POLICY,
    ACCESS_POLICY,
    LABELER_POLICY,
    NODE_POLICY,
    PLUGIN_POLICY,
)
BACKEND_LABEL = "gvirtus.io/backend.allowed"
FRONTEND_LABEL = "gvirtus.io/frontend.allowed"


# -- who asks ----------------------------------------------------------------------------


def _service_account(namespace: str, name: str, *, pod: str | None, node: str | None) -> Obj:
    """UserInfo of a bound ServiceAccount token (a pod's; a controller manager's has no pod)."""
    extra = {"authentication.kubernetes.io/credential-id": [f"JTI={uuid.uuid4()}"]}
    if pod and node:
        extra |= {
            "authentication.kubernetes.io/node-name": [node],
            "authentication.kubernetes.io/node-uid": [str(uuid.uuid4())],
            "authentication.kubernetes.io/pod-name": [pod],
            "authentication.kubernetes.io/pod-uid": [str(uuid.uuid4())],
        }
    return {
        "username": f"system:serviceaccount:{namespace}:{name}",
        "uid": str(uuid.uuid4()),
        "groups": [
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        ],
        "extra": extra,
    }


def _certificate(username: str, *groups: str) -> Obj:
    """UserInfo of a client certificate (kubelets, the captured admin)."""
    return {
        "username": username,
        "groups": [*groups, "system:authenticated"],
        "extra": {"authentication.kubernetes.io/credential-id": [f"X509SHA256={uuid.uuid4().hex}"]},
    }


IDENTITIES: dict[str, Obj] = {
    "controller": _service_account(
        "gvirtus-system",
        "gvirtus-dra-controller",
        pod="gvirtus-dra-controller-7d9c8-x2v4q",
        node="control-plane",
    ),
    "garbage-collector": _service_account(
        "kube-system", "generic-garbage-collector", pod=None, node=None
    ),
    "node": _certificate("system:node:worker-1", "system:nodes"),
    "labeler": _service_account(
        "gvirtus-system",
        "gvirtus-dra-labeler",
        pod="gvirtus-dra-labeler-5f6d7-q8w9e",
        node="worker-2",
    ),
    "plugin": _service_account(
        "gvirtus-system",
        "gvirtus-dra-kubelet-plugin",
        pod="gvirtus-dra-kubelet-plugin-k2j4h",
        node="worker-1",
    ),
    "admin": _certificate("admin", "system:masters"),
}


# -- what they ask -----------------------------------------------------------------------

RESOURCES = {
    "ResourceSlice": ("resource.k8s.io", "resourceslices"),
    "ResourceClaim": ("resource.k8s.io", "resourceclaims"),
    "Node": ("", "nodes"),
    "ConfigMap": ("", "configmaps"),
    "Pod": ("", "pods"),
    "Event": ("", "events"),
}
OPTIONS = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}


def request(
    who: str,
    operation: str,
    *,
    new: Obj | None = None,
    old: Obj | None = None,
    subresource: str = "",
    version: str = "v1",
) -> Obj:
    """An AdmissionRequest as the API server builds it, empty fields left out.

    ``oldObject`` is null on CREATE and ``object`` null on DELETE.
    """
    subject = new or old or {}
    group, resource = RESOURCES[subject["kind"]]
    meta = subject["metadata"]
    gvk = {"group": group, "version": version, "kind": subject["kind"]}
    gvr = {"group": group, "version": version, "resource": resource}
    built: Obj = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": meta.get("name", ""),
        "operation": operation,
        "userInfo": copy.deepcopy(IDENTITIES[who]),
        "object": copy.deepcopy(new),
        "oldObject": copy.deepcopy(old),
        "dryRun": False,
        "options": {"kind": OPTIONS[operation], "apiVersion": "meta.k8s.io/v1"},
    }
    if subresource:
        built["subResource"] = built["requestSubResource"] = subresource
    if meta.get("namespace"):
        built["namespace"] = meta["namespace"]
    return built


def creates(who: str, obj: Obj, allowed: bool, id: str, **how: str) -> Any:
    """A table row: ``who`` creates ``obj``; ``allowed`` is the expected answer."""
    return pytest.param(who, request(who, "CREATE", new=obj, **how), allowed, id=id)


def updates(who: str, new: Obj, old: Obj, allowed: bool, id: str, **how: str) -> Any:
    """A table row: ``who`` changes ``old`` into ``new`` (a PUT or any PATCH)."""
    return pytest.param(who, request(who, "UPDATE", new=new, old=old, **how), allowed, id=id)


def deletes(who: str, old: Obj, allowed: bool, id: str, **how: str) -> Any:
    """A table row: ``who`` deletes ``old``."""
    return pytest.param(who, request(who, "DELETE", old=old, **how), allowed, id=id)


def edited(obj: Obj, *edits: Callable[[Obj], Any]) -> Obj:
    """A changed deep copy of ``obj``."""
    changed = copy.deepcopy(obj)
    for edit in edits:
        edit(changed)
    return changed


def labelled(node: Obj, changes: dict[str, str | None]) -> Obj:
    """``node`` with labels set, or removed where the value is ``None``."""
    changed = copy.deepcopy(node)
    labels = changed["metadata"].setdefault("labels", {})
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    return changed


def our_slice(**spec: Any) -> Obj:
    """The controller's slice of backend-node-a, owned by that Node, as it publishes it."""
    made = objects.backend_slice(
        pool="backend-node-a",
        devices=[objects.Device("gpu-0", uuid="GPU-0"), objects.Device("gpu-1", uuid="GPU-1")],
    )
    made["metadata"] |= {
        "uid": "579da7a3-0723-4a19-823d-610fc332e2ed",
        "labels": {"app.kubernetes.io/managed-by": "gvirtus-dra-controller"},
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": "backend-node-a", "uid": "0b6f7c2e"}
        ],
    }
    made["spec"] |= spec
    return made


def other_drivers_slice(node: str = "worker-1") -> Obj:
    """A node-local slice of another driver, as that node's own plugin publishes it."""
    made = our_slice(driver=OTHER_DRIVER, nodeName=node)
    made["spec"]["pool"]["name"] = node
    del made["spec"]["nodeSelector"]
    made["metadata"] = {"name": f"{node}-gpu.example.com-x7k2p"}
    return made


def moved(slice_: Obj, address: str = "203.0.113.9") -> Obj:
    """``slice_`` with every device pointing at another backend address."""
    changed = copy.deepcopy(slice_)
    for device in changed["spec"]["devices"]:
        device["attributes"]["backendAddress"] = {"string": address}
    return changed


def config_map(name: str, namespace: str = "gvirtus-system") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"addresses": "10.244.1.7\n10.244.2.9\n"},
    }


# -- what they write about ----------------------------------------------------------------

SLICE = our_slice()
OTHERS = other_drivers_slice()
ACCESS = config_map("gvirtus-dra-access-backend-node-a")
OWN_CONFIG = config_map("gvirtus-dra-controller")
KUBE_PROXY = config_map("kube-proxy", "kube-system")
ELSEWHERE = config_map("gvirtus-dra-access-worker-1", "default")

BARE = labelled(objects.node(name="worker-1"), {FRONTEND_LABEL: None})
UNLABELLED = edited(BARE, lambda n: n["metadata"].pop("labels"))
DEFAULTED = labelled(BARE, {FRONTEND_LABEL: "true", BACKEND_LABEL: "false"})
OPTED_OUT = labelled(BARE, {FRONTEND_LABEL: "false"})
OPTED_IN = labelled(DEFAULTED, {BACKEND_LABEL: "true"})
NO_FRONTEND = labelled(DEFAULTED, {FRONTEND_LABEL: "false"})


def by_the_labeler(node: Obj) -> Obj:
    """The node after the labeler's own JSON Patch (labeler/labels.py)."""
    stored = labelled(node, {}) | {"metadata": {**node["metadata"], "resourceVersion": "574"}}
    patch = labeler_labels.patch_for(stored, labeler_labels.missing_labels(stored))
    assert patch[1:], "the labeler has something to add"
    return jsonpatch.apply_patch(stored, patch)


def _annotate(node: Obj) -> None:
    node["metadata"]["annotations"]["gvirtus.io/note"] = "x"


def _taint(node: Obj) -> None:
    node.setdefault("spec", {})["taints"] = [{"key": "gvirtus.io/drain", "effect": "NoExecute"}]


def _cordon(node: Obj) -> None:
    node["spec"]["unschedulable"] = True


def _finalize(node: Obj) -> None:
    node["metadata"]["finalizers"] = ["gvirtus.io/keep"]


SPECLESS = edited(DEFAULTED, lambda n: n.pop("spec"))
WITH_ZONE = labelled(DEFAULTED, {"gvirtus.io/zone": "a"})
WITH_ROLE = labelled(DEFAULTED, {"node-role.kubernetes.io/gpu": ""})
NO_FRONTEND_LABEL = labelled(DEFAULTED, {FRONTEND_LABEL: None})
BACKEND_ONLY = labelled(BARE, {BACKEND_LABEL: "true"})
STATUS = {"subresource": "status"}


def _heartbeat(node: Obj) -> None:
    node["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]


CLAIM = objects.allocated_claim(name="gpu-claim")
POD = objects.legacy_pod()
EVENT = {
    "apiVersion": "v1",
    "kind": "Event",
    "metadata": {"name": "gpu-claim.1", "namespace": "gvirtus-demo"},
    "reason": "Prepared",
}

# -- what the install answers ------------------------------------------------------------


def installed() -> tuple[dict[str, Obj], dict[str, Obj]]:
    """The rendered install's policies and bindings, by name."""
    rendered = manifests.render("manifests")
    return (
        manifests.named(rendered, "ValidatingAdmissionPolicy"),
        manifests.named(rendered, "ValidatingAdmissionPolicyBinding"),
    )


def verdicts(req: Obj) -> dict[str, cel.Verdict]:
    """Every bound policy's verdict on ``req``: what the API server would decide."""
    policies, bindings = installed()
    bound = {b["spec"]["policyName"] for b in bindings.values()}
    return {name: cel.admit(p["spec"], req) for name, p in policies.items() if name in bound}


def check(policy: str, req: Obj, allowed: bool) -> cel.Verdict:
    """``policy``'s verdict, which must be ``allowed`` and reached without an error."""
    answer = cel.admit(installed()[0][policy]["spec"], req)
    assert answer.errors == (), answer.errors
    assert answer.allowed is allowed, answer.refusals
    assert set(answer.reasons) == ({"Forbidden"} if not allowed else set())
    return answer


# -- the install ---------------------------------------------------------------------------


def test_every_policy_is_installed_bound_to_deny_and_failing_closed() -> None:
    policies, bindings = installed()

    assert set(policies) == set(POLICIES)
    assert set(bindings) == set(POLICIES)
    for name, policy in policies.items():
        spec = policy["spec"]
        assert bindings[name]["spec"] == {"policyName": name, "validationActions": ["Deny"]}
        assert spec["failurePolicy"] == "Fail"
        for rule in spec["matchConstraints"]["resourceRules"]:
            assert rule["apiVersions"] == ["*"], f"{name}: every version of {rule['resources']}"


# -- only the controller defines this driver's devices -------------------------------------

WRITES_SLICES = {"controller"}
DELETES_SLICES = {"controller", "garbage-collector"}


def _orphan(slice_: Obj) -> None:
    slice_["metadata"].pop("ownerReferences")


SLICE_TABLE = [
    *[creates(w, SLICE, w in WRITES_SLICES, f"{w}-creates") for w in IDENTITIES],
    *[updates(w, moved(SLICE), SLICE, w in WRITES_SLICES, f"{w}-moves") for w in IDENTITIES],
    *[deletes(w, SLICE, w in DELETES_SLICES, f"{w}-deletes") for w in IDENTITIES],
    # Orphaning a deleted Node's dependents takes their owner references away.
    updates("garbage-collector", edited(SLICE, _orphan), SLICE, True, "collector-orphans"),
    updates("admin", edited(SLICE, _orphan), SLICE, False, "admin-orphans"),
    updates("node", our_slice(driver=OTHER_DRIVER), SLICE, False, "node-changes-driver-away"),
    updates("admin", SLICE, our_slice(driver=OTHER_DRIVER), False, "admin-changes-driver-to-ours"),
    creates("controller", SLICE, True, "controller-through-v1beta2", version="v1beta2"),
    creates("admin", SLICE, False, "admin-through-v1beta1", version="v1beta1"),
    # Other drivers' slices are their business.
    creates("node", OTHERS, True, "node-publishes-other-driver"),
    deletes("node", OTHERS, True, "node-deletes-other-driver"),
    updates("admin", moved(OTHERS), OTHERS, True, "admin-edits-other-driver"),
    creates("plugin", OTHERS, True, "plugin-other-driver"),
    deletes("labeler", OTHERS, True, "labeler-other-driver"),
]


@pytest.mark.parametrize(("who", "req", "allowed"), SLICE_TABLE)
def test_only_the_controller_writes_this_drivers_slices(who: str, req: Obj, allowed: bool) -> None:
    answer = check(SLICES_POLICY, req, allowed)

    for message in answer.refusals:
        assert message.startswith("only the gvirtus-dra controller ")
        assert f"not {IDENTITIES[who]['username']}:" in message, "names who was refused"
    if answer.refusals and req["operation"] == "DELETE":
        assert "--as=system:serviceaccount:gvirtus-system:gvirtus-dra-controller" in message
        assert "docs/security.md" in message


def _own_node(slice_: Obj) -> None:
    del slice_["spec"]["nodeSelector"]
    slice_["spec"]["nodeName"] = "worker-1"


def _all_nodes(slice_: Obj) -> None:
    del slice_["spec"]["nodeSelector"]
    slice_["spec"]["allNodes"] = True


def _newer_pool(slice_: Obj) -> None:
    slice_["metadata"]["name"] = "gpu.gvirtus.io-backend-node-a-x"
    slice_["spec"]["pool"]["generation"] = 100


def _other_owner(slice_: Obj) -> None:
    slice_["metadata"]["ownerReferences"][0] |= {"name": "worker-1", "uid": "9c1d"}
    slice_["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "kubelet"}


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(_own_node, id="own-node-nodeName"),
        pytest.param(_all_nodes, id="allNodes"),
        pytest.param(_newer_pool, id="same-pool-generation-100"),
        pytest.param(_other_owner, id="other-owner-and-labels"),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1beta2"])
def test_a_slice_forged_with_a_nodes_credentials_is_refused(
    forge: Callable[[Obj], None], version: str
) -> None:
    forged = edited(moved(SLICE), forge)
    answers = verdicts(request("node", "CREATE", new=forged, version=version))

    assert {name: a.errors for name, a in answers.items() if a.errors} == {}
    assert [name for name, a in answers.items() if not a.allowed] == [SLICES_POLICY]


# -- the controller keeps to its own -------------------------------------------------------


CONTROLLER_TABLE = [
    creates("controller", SLICE, True, "creates-ours"),
    updates("controller", moved(SLICE), SLICE, True, "updates-ours"),
    deletes("controller", SLICE, True, "deletes-ours"),
    creates("controller", OTHERS, False, "creates-other-drivers"),
    updates("controller", moved(OTHERS), OTHERS, False, "updates-other-drivers"),
    deletes("controller", OTHERS, False, "deletes-other-drivers"),
    updates("controller", our_slice(driver=OTHER_DRIVER), SLICE, False, "gives-ours-away"),
    creates("controller", ACCESS, True, "creates-access-list"),
    updates("controller", ACCESS, ACCESS, True, "updates-access-list"),
    deletes("controller", ACCESS, True, "deletes-access-list"),
    updates("controller", OWN_CONFIG, OWN_CONFIG, False, "rewrites-own-config"),
    deletes("controller", KUBE_PROXY, False, "deletes-kube-proxy"),
    creates("controller", ELSEWHERE, False, "access-list-in-another-namespace"),
    updates("admin", OWN_CONFIG, OWN_CONFIG, True, "admin-untouched"),
    creates("node", OTHERS, True, "node-untouched"),
    deletes("garbage-collector", OTHERS, True, "collector-untouched"),
    creates("labeler", KUBE_PROXY, True, "labeler-untouched"),
    updates("plugin", ACCESS, ACCESS, True, "plugin-untouched"),
]


@pytest.mark.parametrize(("who", "req", "allowed"), CONTROLLER_TABLE)
def test_the_controller_writes_only_its_own_slices_and_config_maps(
    who: str, req: Obj, allowed: bool
) -> None:
    answer = check(CONTROLLER_POLICY, req, allowed)

    assert answer.matched is (who == "controller"), "other identities are other policies' matter"


# -- the labeler adds default labels, nothing else -----------------------------------------


LABELER_TABLE = [
    updates("labeler", by_the_labeler(BARE), BARE, True, "adds-both-defaults"),
    updates("labeler", by_the_labeler(UNLABELLED), UNLABELLED, True, "labels-unlabelled-node"),
    updates("labeler", by_the_labeler(OPTED_OUT), OPTED_OUT, True, "adds-the-missing-one"),
    updates("labeler", WITH_ZONE, DEFAULTED, True, "adds-another-gvirtus-label"),
    updates("labeler", BACKEND_ONLY, BARE, False, "opts-a-node-in"),
    updates("labeler", NO_FRONTEND, DEFAULTED, False, "overwrites-a-value"),
    updates("labeler", NO_FRONTEND_LABEL, DEFAULTED, False, "removes-a-label"),
    updates("labeler", WITH_ROLE, DEFAULTED, False, "adds-another-prefix"),
    updates("labeler", edited(DEFAULTED, _annotate), DEFAULTED, False, "annotates"),
    updates("labeler", edited(DEFAULTED, _taint), DEFAULTED, False, "taints"),
    updates("labeler", edited(SPECLESS, _taint), SPECLESS, False, "gives-a-spec"),
    updates("labeler", edited(DEFAULTED, _cordon), DEFAULTED, False, "cordons"),
    updates("labeler", edited(DEFAULTED, _finalize), DEFAULTED, False, "adds-a-finalizer"),
    updates("labeler", by_the_labeler(BARE), BARE, False, "labels-through-status", **STATUS),
    creates("labeler", DEFAULTED, False, "creates-a-node"),
    deletes("labeler", DEFAULTED, False, "deletes-a-node"),
    updates("admin", edited(DEFAULTED, _taint), DEFAULTED, True, "admin-untouched"),
    updates("node", edited(DEFAULTED, _annotate), DEFAULTED, True, "node-untouched"),
    updates("controller", edited(DEFAULTED, _cordon), DEFAULTED, True, "controller-untouched"),
    deletes("garbage-collector", DEFAULTED, True, "collector-untouched"),
    updates("plugin", WITH_ROLE, DEFAULTED, True, "plugin-untouched"),
]


@pytest.mark.parametrize(("who", "req", "allowed"), LABELER_TABLE)
def test_the_labeler_only_adds_default_labels(who: str, req: Obj, allowed: bool) -> None:
    answer = check(LABELER_POLICY, req, allowed)

    assert answer.matched is (who == "labeler")
    assert all(message.startswith("the gvirtus-dra labeler ") for message in answer.refusals)


# -- a node cannot make itself a backend ---------------------------------------------------


NODE_TABLE = [
    creates("node", BARE, True, "registers"),
    creates("node", UNLABELLED, True, "registers-unlabelled"),
    creates("node", OPTED_OUT, True, "registers-as-no-frontend"),
    creates("node", OPTED_IN, False, "registers-opted-in"),
    creates("node", DEFAULTED, False, "registers-opted-out"),
    updates("node", edited(OPTED_IN, _heartbeat), OPTED_IN, True, "backend-reports", **STATUS),
    updates("node", edited(UNLABELLED, _heartbeat), UNLABELLED, True, "bare-reports", **STATUS),
    updates("node", NO_FRONTEND, DEFAULTED, True, "changes-another-label"),
    updates("node", OPTED_IN, DEFAULTED, False, "opts-itself-in"),
    updates("node", BACKEND_ONLY, BARE, False, "sets-the-label"),
    updates("node", DEFAULTED, OPTED_IN, False, "changes-the-label"),
    updates("node", labelled(OPTED_IN, {BACKEND_LABEL: None}), OPTED_IN, False, "removes-it"),
    updates("node", OPTED_IN, DEFAULTED, False, "opts-in-through-status", **STATUS),
    updates("admin", OPTED_IN, DEFAULTED, True, "admin-opts-a-node-in"),
    updates("labeler", by_the_labeler(BARE), BARE, True, "labeler-adds-the-default"),
    updates("controller", OPTED_IN, DEFAULTED, True, "controller-untouched"),
    updates("garbage-collector", OPTED_IN, DEFAULTED, True, "collector-untouched"),
    updates("plugin", OPTED_IN, DEFAULTED, True, "plugin-untouched"),
]


@pytest.mark.parametrize(("who", "req", "allowed"), NODE_TABLE)
def test_a_node_cannot_opt_itself_in_as_a_backend(who: str, req: Obj, allowed: bool) -> None:
    answer = check(NODE_POLICY, req, allowed)

    assert answer.matched is (who == "node")
    for message in answer.refusals:
        assert message.startswith("system:node:worker-1 may not set, change or remove")
        assert "kubectl label node NODE gvirtus.io/backend.allowed=true --overwrite" in message


def test_any_member_of_system_nodes_counts_as_a_node() -> None:
    req = request("node", "UPDATE", new=OPTED_IN, old=DEFAULTED)
    req["userInfo"]["username"] = "node-bootstrapper"

    check(NODE_POLICY, req, False)


# -- the kubelet plugin writes nothing -----------------------------------------------------

PLUGIN_TABLE = [
    creates("plugin", SLICE, False, "creates-a-slice"),
    creates("plugin", OTHERS, False, "creates-its-nodes-slice"),
    updates("plugin", CLAIM, CLAIM, False, "writes-claim-status", subresource="status"),
    updates("plugin", OPTED_IN, DEFAULTED, False, "labels-its-node"),
    deletes("plugin", POD, False, "deletes-a-pod"),
    creates("plugin", EVENT, False, "records-an-event"),
    updates("controller", CLAIM, CLAIM, True, "controller-writes-status", subresource="status"),
    creates("node", EVENT, True, "node-records-an-event"),
    deletes("admin", POD, True, "admin-deletes-a-pod"),
    updates("labeler", by_the_labeler(BARE), BARE, True, "labeler-untouched"),
    deletes("garbage-collector", CLAIM, True, "collector-untouched"),
]


@pytest.mark.parametrize(("who", "req", "allowed"), PLUGIN_TABLE)
def test_the_kubelet_plugin_writes_nothing(who: str, req: Obj, allowed: bool) -> None:
    answer = check(PLUGIN_POLICY, req, allowed)

    assert answer.matched is (who == "plugin")
    for message in answer.refusals:
        assert f"(refused: {req['operation']} {req['resource']['resource']}" in message


# -- only the controller says who may reach a backend -----------------------------------------


def _admit_everyone(config_map: Obj) -> None:
    config_map["data"] = {"addresses": "0.0.0.0/0\n"}


def _orphan_list(config_map: Obj) -> None:
    config_map["metadata"]["ownerReferences"] = []


ACCESS_TABLE = [
    *[creates(w, ACCESS, w == "controller", f"{w}-creates") for w in IDENTITIES],
    *[
        updates(w, edited(ACCESS, _admit_everyone), ACCESS, w == "controller", f"{w}-widens")
        for w in IDENTITIES
    ],
    *[deletes(w, ACCESS, w in DELETES_SLICES, f"{w}-deletes") for w in IDENTITIES],
    updates("garbage-collector", edited(ACCESS, _orphan_list), ACCESS, True, "collector-orphans"),
    # Other ConfigMaps of the namespace are not access lists.
    creates("admin", OWN_CONFIG, True, "admin-writes-the-policy-config"),
    updates("labeler", edited(OWN_CONFIG, _admit_everyone), OWN_CONFIG, True, "not-an-access-list"),
]


@pytest.mark.parametrize(("who", "req", "allowed"), ACCESS_TABLE)
def test_only_the_controller_writes_the_backend_access_lists(
    who: str, req: Obj, allowed: bool
) -> None:
    answer = check(ACCESS_POLICY, req, allowed)

    for message in answer.refusals:
        assert message.startswith("only the gvirtus-dra controller ")
        assert f"not {IDENTITIES[who]['username']}:" in message, "names who was refused"


# -- the tables themselves -----------------------------------------------------------------

TABLES = {
    SLICES_POLICY: SLICE_TABLE,
    CONTROLLER_POLICY: CONTROLLER_TABLE,
    ACCESS_POLICY: ACCESS_TABLE,
    LABELER_POLICY: LABELER_TABLE,
    NODE_POLICY: NODE_TABLE,
    PLUGIN_POLICY: PLUGIN_TABLE,
}


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_is_tried_by_every_identity_with_every_operation_it_matches(
    policy: str,
) -> None:
    rows = [row.values for row in TABLES[policy]]
    rules = installed()[0][policy]["spec"]["matchConstraints"]["resourceRules"]
    matched = {op for rule in rules for op in rule["operations"]}

    assert {who for who, _, _ in rows} == set(IDENTITIES)
    assert {allowed for _, _, allowed in rows} == {True, False}
    assert {req["operation"] for _, req, allowed in rows if not allowed} == matched
