"""AdmissionReview ``admission.k8s.io/v1``: reading requests, writing responses.

Two kinds of bad input are told apart: a body that is not an AdmissionReview at
all (an HTTP 400: it cannot have come from an API server) and a review whose pod
cannot be converted (a denial in ``response``, which the API server shows to the
pod's author).

The body comes from anyone who can reach the port, so it is parsed by a decoder
that refuses nesting deeper than 1,024 levels instead of recursing into a
``RecursionError``, and then checked, without recursion, to nest no deeper than
:data:`MAX_DEPTH`: nothing downstream (diffing the pod, formatting a value into a
message) can recurse its way into a traceback.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

API_VERSION = "admission.k8s.io/v1"
MAX_DEPTH = 64
"""Deepest nesting accepted: a pod's own schema nests about 15 levels."""
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SIGNED = bytes.maketrans(b"[]{}", bytes([1, 255, 1, 255]))
"""Opening brackets become 1 and closing ones -1 when the bytes are read as signed."""


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
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadReview(f"the body is not JSON: {exc}") from exc
    if (depth := nesting(raw)) > MAX_DEPTH:
        raise BadReview(
            f"the body nests {depth} levels deep; an AdmissionReview of a pod never nests "
            f"deeper than {MAX_DEPTH}"
        )
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        raise BadReview("the body is not an AdmissionReview")
    if document.get("apiVersion") != API_VERSION:
        raise BadReview(
            f"AdmissionReview {shown(document.get('apiVersion'))} is not supported; "
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
    if not isinstance(namespace, str) or (namespace and not _DNS_LABEL.fullmatch(namespace)):
        raise BadReview(f"request.namespace {shown(namespace)} is not a namespace name")
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


def nesting(raw: bytes) -> int:
    """How deep the objects and arrays of a valid JSON text nest, computed without recursion.

    Strings are removed first (brackets inside them do not nest anything); what is
    left is a balanced sequence of brackets whose deepest running sum is the depth.
    """
    brackets = _outside_strings(raw).translate(_SIGNED, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(itertools.accumulate(memoryview(brackets).cast("b")))


def _outside_strings(raw: bytes) -> bytes:
    """The bytes of a valid JSON text that are not inside a string.

    Backslashes occur only inside strings, as escapes read left to right, so removing
    escaped backslashes and then escaped quotes leaves only the quotes that open or
    close a string, and every other piece between them is outside one.
    """
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[::2])


def shown(value: Any, *, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages quoting what a client sent."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]}"


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
