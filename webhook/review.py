"""AdmissionReview ``admission.k8s.io/v1``: reading requests, writing responses.

Two kinds of bad input are told apart: a body that is not an AdmissionReview at
all (an HTTP 400: it cannot have come from an API server) and a review whose pod
cannot be converted (a denial in ``response``, which the API server shows to the
pod's author).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

API_VERSION = "admission.k8s.io/v1"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class BadReview(ValueError):  # noqa: N818 - reads better at the call site than BadReviewError
    """The body is not a usable AdmissionReview; answered with HTTP 400."""


@dataclass(frozen=True)
class Review:
    """The parts of a review the webhook uses."""

    uid: str
    operation: str
    namespace: str
    dry_run: bool
    kind: tuple[str, str, str]
    pod: dict[str, Any]

    @property
    def is_pod_create(self) -> bool:
        """Only creating a Pod is ever converted."""
        return self.operation == "CREATE" and self.kind == ("", "v1", "Pod")


def parse(raw: bytes) -> Review:
    """Read an AdmissionReview.

    Raises:
        BadReview: not JSON, not an AdmissionReview v1, or without a request uid.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReview(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        raise BadReview("the body is not an AdmissionReview")
    if document.get("apiVersion") != API_VERSION:
        raise BadReview(
            f"AdmissionReview {document.get('apiVersion')!r} is not supported; "
            f"configure admissionReviewVersions: [v1]"
        )
    request = document.get("request")
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("uid"), str)
        or not request["uid"]
    ):
        raise BadReview("the AdmissionReview has no request with a uid")
    namespace = request.get("namespace") or ""
    if not isinstance(namespace, str) or (namespace and not _DNS_LABEL.match(namespace)):
        raise BadReview(f"request.namespace {namespace!r} is not a namespace name")
    kind = request.get("kind")
    if not isinstance(kind, dict):
        kind = {}
    pod = request.get("object")
    return Review(
        uid=request["uid"],
        operation=str(request.get("operation", "")),
        namespace=namespace,
        dry_run=request.get("dryRun") is True,
        kind=(str(kind.get("group", "")), str(kind.get("version", "")), str(kind.get("kind", ""))),
        pod=pod if isinstance(pod, dict) else {},
    )


def allow(
    uid: str, *, patch: list[dict[str, Any]] | None = None, warnings: list[str] | None = None
) -> bytes:
    """An allowing response, with a JSON Patch when there is one."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(
            json.dumps(patch, separators=(",", ":")).encode()
        ).decode()
    if warnings:
        response["warnings"] = warnings
    return _review(response)


def deny(uid: str, message: str, *, code: int = 400) -> bytes:
    """A denial the API server reports to whoever created the pod."""
    return _review({"uid": uid, "allowed": False, "status": {"code": code, "message": message}})


def _review(response: dict[str, Any]) -> bytes:
    return json.dumps(
        {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
    ).encode()
