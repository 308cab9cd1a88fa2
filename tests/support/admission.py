"""Mutating admission for the test API server: pods pass through the configured webhooks.

On a pod CREATE the server calls every webhook of every stored
MutatingWebhookConfiguration whose rules, ``objectSelector`` and
``namespaceSelector`` match, the way a Kubernetes 1.36 API server does (see the
captures in section 08 of ``tests/fixtures/k8s-1.36``):

* the pod is defaulted first (requests copied from limits), so webhooks see what
  they would see in a cluster;
* the call is ``POST <path>?timeout=<n>s`` over TLS, trusting only the
  configuration's ``caBundle`` and checking the name ``<service>.<namespace>.svc``
  (services resolve to local ports registered in :attr:`Admission.services`);
* a denial becomes ``admission webhook "<name>" denied the request: <message>``
  with the webhook's code (at least 400); a failed call, a body that is not an
  AdmissionReview, a wrong uid or a patch that does not apply is a 500
  ``InternalError`` under ``failurePolicy: Fail`` and is skipped under ``Ignore``;
* dry-run requests reach only webhooks declaring no side effects on dry run;
* a webhook with ``reinvocationPolicy: IfNeeded`` is called once more when a later
  webhook changed the pod.

Namespaces carry only their ``kubernetes.io/metadata.name`` label.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonpatch

from tests.support import selectors

Obj = dict[str, Any]


class AdmissionError(Exception):
    """The API server's answer when admission fails: code, reason and message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Call:
    """One webhook call, as the server made it (tests inspect these)."""

    webhook: str
    dry_run: bool
    outcome: str
    seconds: float


@dataclass
class Admission:
    """Calls webhooks; ``services`` maps ``(namespace, name, port)`` to a local port."""

    services: dict[tuple[str, str, int], int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def admit_pod(
        self,
        *,
        configurations: list[Obj],
        namespace: str,
        pod: Obj,
        dry_run: bool,
        options: Obj,
    ) -> tuple[Obj, list[str]]:
        """The pod after mutation, and the webhooks' warnings.

        Raises:
            AdmissionError: a webhook denied the pod or failed under ``failurePolicy: Fail``.
        """
        pod = default_pod(pod)
        warnings: list[str] = []
        webhooks = [
            w
            for c in configurations
            for w in c.get("webhooks") or []
            if _matches(w, namespace=namespace, pod=pod)
        ]
        reinvoke: list[Obj] = []
        for index, webhook in enumerate(webhooks):
            before = pod
            pod = await self._call(webhook, namespace, pod, dry_run, options, warnings)
            if pod != before:
                reinvoke += [
                    w for w in webhooks[:index] if w.get("reinvocationPolicy") == "IfNeeded"
                ]
        for webhook in reinvoke:
            pod = await self._call(webhook, namespace, pod, dry_run, options, warnings)
        return pod, warnings

    async def _call(
        self,
        webhook: Obj,
        namespace: str,
        pod: Obj,
        dry_run: bool,
        options: Obj,
        warnings: list[str],
    ) -> Obj:
        name = webhook["name"]
        if dry_run and webhook.get("sideEffects") not in ("None", "NoneOnDryRun"):
            raise AdmissionError(
                400, "BadRequest", f'admission webhook "{name}" does not support dry run'
            )
        started = time.perf_counter()
        uid = str(uuid.uuid4())
        review = _review(uid=uid, namespace=namespace, pod=pod, dry_run=dry_run, options=options)
        try:
            response = await self._post(webhook, review)
            patched = _apply(webhook, uid, response, pod, warnings)
        except _CallError as exc:
            self.calls.append(Call(name, dry_run, "failed", time.perf_counter() - started))
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                return pod
            message = f'failed calling webhook "{name}": {exc}'
            raise AdmissionError(
                500, "InternalError", f"Internal error occurred: {message}"
            ) from exc
        except _PatchError as exc:
            self.calls.append(Call(name, dry_run, "bad-patch", time.perf_counter() - started))
            raise AdmissionError(500, "InternalError", f"Internal error occurred: {exc}") from exc
        except AdmissionError:
            self.calls.append(Call(name, dry_run, "denied", time.perf_counter() - started))
            raise
        self.calls.append(Call(name, dry_run, "allowed", time.perf_counter() - started))
        return patched

    async def _post(self, webhook: Obj, review: Obj) -> bytes:
        config = webhook.get("clientConfig") or {}
        context = ssl.create_default_context()
        bundle = config.get("caBundle")
        if bundle:
            try:
                context.load_verify_locations(cadata=base64.b64decode(bundle).decode())
            except (binascii.Error, ValueError, ssl.SSLError) as exc:
                raise _CallError(f"failed to call webhook: bad caBundle: {exc}") from exc
        timeout = int(webhook.get("timeoutSeconds", 10))
        if "service" in config:
            service = config["service"]
            port = int(service.get("port", 443))
            local = self.services.get((service["namespace"], service["name"], port))
            host = f"{service['name']}.{service['namespace']}.svc"
            if local is None:
                raise _CallError(f'failed to call webhook: service "{host}" has no endpoints')
            url = f"https://127.0.0.1:{local}{service.get('path', '/')}?timeout={timeout}s"
        else:
            url, host = f"{config['url']}?timeout={timeout}s", None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url,
                data=json.dumps(review).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json, */*",
                    "User-Agent": "kube-apiserver-admission",
                },
                ssl=context,
                server_hostname=host,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise _CallError(
                        f"failed to call webhook: the server responded with {response.status}: "
                        f"{body[:200].decode(errors='replace')}"
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = "context deadline exceeded" if isinstance(exc, TimeoutError) else str(exc)
            raise _CallError(f'failed to call webhook: Post "{url}": {detail}') from exc


class _CallError(Exception):
    pass


class _PatchError(Exception):
    pass


def _review(*, uid: str, namespace: str, pod: Obj, dry_run: bool, options: Obj) -> Obj:
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": (pod.get("metadata") or {}).get("name", ""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", **options},
        },
    }


def _apply(webhook: Obj, uid: str, raw: bytes, pod: Obj, warnings: list[str]) -> Obj:
    name = webhook["name"]
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise _CallError(
            f"failed to call webhook: couldn't get version/kind; json parse error: {exc}"
        ) from exc
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        raise _CallError("failed to call webhook: the response is not an AdmissionReview")
    if document.get("apiVersion") != "admission.k8s.io/v1":
        raise _CallError(
            f"failed to call webhook: unexpected response version {document.get('apiVersion')!r}"
        )
    response = document.get("response")
    if not isinstance(response, dict):
        raise _CallError("failed to call webhook: response is missing")
    if response.get("uid") != uid:
        raise _CallError(f'expected response.uid="{uid}", got "{response.get("uid")}"')
    warnings += [str(w) for w in response.get("warnings") or []]
    if not response.get("allowed"):
        status = response.get("status") or {}
        code = max(int(status.get("code") or 400), 400)
        denied = f'admission webhook "{name}" denied the request'
        message = status.get("message") or status.get("reason")
        text = f"{denied}: {message}" if message else f"{denied} without explanation"
        raise AdmissionError(code, str(status.get("reason") or ""), text)
    if "patch" not in response:
        return pod
    if response.get("patchType") != "JSONPatch":
        raise _CallError(f"unsupported patch type {response.get('patchType')!r}")
    try:
        operations = json.loads(base64.b64decode(response["patch"]))
        return jsonpatch.apply_patch(copy.deepcopy(pod), operations)
    except (binascii.Error, ValueError) as exc:
        raise _PatchError(f"the patch is not a JSON Patch: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise _PatchError(f"JSON Patch does not apply: {exc}") from exc


def _matches(webhook: Obj, *, namespace: str, pod: Obj) -> bool:
    def has(values: list[str] | None, wanted: str) -> bool:
        return values is not None and ("*" in values or wanted in values)

    if not any(
        has(r.get("operations"), "CREATE")
        and has(r.get("apiGroups"), "")
        and has(r.get("apiVersions"), "v1")
        and (has(r.get("resources"), "pods") or "*/*" in (r.get("resources") or []))
        for r in webhook.get("rules") or []
    ):
        return False
    objects = selectors.from_label_selector(webhook.get("objectSelector"))
    if not selectors.labels_match(objects, pod):
        return False
    namespaces = selectors.from_label_selector(webhook.get("namespaceSelector"))
    namespace_object = {"metadata": {"labels": {"kubernetes.io/metadata.name": namespace}}}
    return selectors.labels_match(namespaces, namespace_object)


def default_pod(pod: Obj) -> Obj:
    """The defaulting webhooks observe: each limit without a request becomes the request."""
    pod = copy.deepcopy(pod)
    spec = pod.get("spec") or {}
    for kind in ("containers", "initContainers"):
        for container in spec.get(kind) or []:
            resources = container.get("resources")
            if not isinstance(resources, dict) or not isinstance(resources.get("limits"), dict):
                continue
            requests = resources.setdefault("requests", {})
            if isinstance(requests, dict):
                for resource, value in resources["limits"].items():
                    requests.setdefault(resource, value)
    return pod
