"""The project's own view of API failures.

Components never catch the client library's exceptions: they catch these. The
mapping reads the ``Status`` body the API server returns (reason, message, details),
so a caller can tell "the claim is gone" from "the object changed under me" from
"the server is unreachable" without parsing strings, and the library's exception
stays chained as ``__cause__`` for logs. This is also the seam that isolates the
project from the next generator churn of the official client.
"""

from __future__ import annotations

import json
from typing import Any


class KubeError(Exception):
    """A Kubernetes API call failed.

    Attributes:
        status: HTTP status code, or 0 when no response arrived.
        reason: the ``Status.reason`` (``NotFound``, ``Conflict``, ...) or a short tag.
        message: the server's message, or a description of the transport failure.
    """

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class TransportError(KubeError):
    """No usable answer: connection refused or reset, TLS failure, timeout."""


class UnauthorizedError(KubeError):
    """401: the credentials were rejected."""


class ForbiddenError(KubeError):
    """403: RBAC does not allow the call."""


class NotFoundError(KubeError):
    """404: the object (or its namespace) does not exist."""


class ConflictError(KubeError):
    """409 Conflict: a precondition or resourceVersion no longer matches."""


class AlreadyExistsError(KubeError):
    """409 AlreadyExists: a create hit an existing name."""


class GoneError(KubeError):
    """410: the resourceVersion or continue token is too old; re-list."""


class InvalidError(KubeError):
    """400 or 422: the server refused the object or the request as malformed."""


class ServerError(KubeError):
    """5xx or 429: the server failed or asked to back off; retrying may help."""


_BY_STATUS: dict[int, type[KubeError]] = {
    400: InvalidError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    410: GoneError,
    422: InvalidError,
}


def from_status(*, status: int, body: str | bytes | None, fallback: str = "") -> KubeError:
    """Build the matching error from an HTTP status and a (possibly non-JSON) body."""
    parsed = _parse_status_body(body)
    reason = str(parsed.get("reason") or fallback or "")
    message = str(parsed.get("message") or fallback or f"HTTP {status}")
    if status == 409:
        kind: type[KubeError] = AlreadyExistsError if reason == "AlreadyExists" else ConflictError
    elif status == 429 or status >= 500:
        kind = ServerError
    else:
        kind = _BY_STATUS.get(status, KubeError)
    return kind(message, status=status, reason=reason)


def _parse_status_body(body: str | bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}
