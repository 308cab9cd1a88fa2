"""The HTTPS endpoint: ``POST /mutate`` with an AdmissionReview, answered in milliseconds.

Every failure has an answer the caller can act on, and none is a 500: a body that
is not an AdmissionReview (or too large) gets HTTP 400 with the reason; a pod that
cannot be converted gets a denial naming the container and the fix; anything else
gets an allowing review. Dry-run reviews create no templates, and neither does a
review for a namespace the webhook's configuration leaves out (the API server never
sends one; whoever did gets the pod back untouched).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter, Histogram

from dra_driver import logs
from dra_driver.kube import errors
from webhook import connections, mutate, review
from webhook.scope import OutOfScope, Scope, ScopeUnknown
from webhook.templates import Templates

log = logging.getLogger(__name__)

REVIEWS = Counter(
    "gvirtus_dra_webhook_reviews_total", "AdmissionReviews answered, by outcome.", ["outcome"]
)
SECONDS = Histogram(
    "gvirtus_dra_webhook_review_duration_seconds",
    "Time to answer one AdmissionReview.",
    ["outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
OUTCOMES = ("converted", "unchanged", "skipped", "excluded", "denied", "bad_request", "error")
for _outcome in OUTCOMES:
    REVIEWS.labels(_outcome)


@dataclass(frozen=True)
class Converter:
    """What ``/mutate`` needs."""

    templates: Templates
    scope: Scope
    max_gpus: int
    max_body: int
    request_timeout: float


CONVERTER = web.AppKey("converter", Converter)


async def mutate_handler(request: web.Request) -> web.Response:
    """Answer one AdmissionReview."""
    started = time.perf_counter()
    outcome, response = await _answer(request)
    REVIEWS.labels(outcome).inc()
    SECONDS.labels(outcome).observe(time.perf_counter() - started)
    return response


async def _answer(request: web.Request) -> tuple[str, web.Response]:
    """The outcome and the answer; a bug here refuses the pod with a reason, not a 500."""
    try:
        return await _review(request)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("failed to review a request", extra={"incident": incident})
        uid = request.get("review_uid")
        if not isinstance(uid, str):
            return "error", _bad(f"internal error (incident {incident} in the webhook's log)")
        message = (
            "gvirtus-dra: internal error while converting the pod "
            f"(incident {incident} in the webhook's log); please report it"
        )
        return "error", _json(review.deny(uid, message, code=500))


async def _read(request: web.Request, converter: Converter) -> bytes | web.Response:
    """The whole body, or the answer to a body too large or too slow to arrive."""
    too_large = _bad(f"the request body is larger than {converter.max_body} bytes")
    if request.content_length is not None and request.content_length > converter.max_body:
        return too_large
    try:
        async with asyncio.timeout(converter.request_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return too_large
    except TimeoutError:
        log.warning("request body too slow", extra={"remote": request.remote})
        text = f"the request body did not arrive within {converter.request_timeout:g} s\n"
        return web.Response(status=408, text=text, headers={"Connection": "close"})


async def _review(request: web.Request) -> tuple[str, web.Response]:
    converter = request.app[CONVERTER]
    raw = await _read(request, converter)
    if isinstance(raw, web.Response):
        return "bad_request", raw
    try:
        parsed = review.parse(raw)
    except review.BadReview as exc:
        log.warning("bad request: %s", exc, extra={"remote": request.remote})
        return "bad_request", _bad(str(exc))
    request["review_uid"] = parsed.uid
    if not parsed.is_pod_create or not mutate.wants_conversion(parsed.pod):
        return "skipped", _json(review.allow(parsed.uid))
    if not parsed.namespace:
        return "bad_request", _bad("the AdmissionReview of a pod names no request.namespace")
    metadata = parsed.pod["metadata"]
    name = metadata.get("name") or f"{metadata.get('generateName', '')}*"
    name = name[:253] if isinstance(name, str) else review.shown(name)
    with logs.context(pod=f"{parsed.namespace}/{name}", review=parsed.uid, dry_run=parsed.dry_run):
        try:
            converter.scope.check(parsed.namespace)
        except OutOfScope as exc:
            log.warning("not converted: %s", exc, extra={"remote": request.remote})
            return "excluded", _json(review.allow(parsed.uid))
        except ScopeUnknown as exc:
            log.warning("not converted: %s", exc)
            message = f"gvirtus-dra: cannot tell whether to convert pods here: {exc}"
            return "denied", _json(review.deny(parsed.uid, message, code=503))
        try:
            plan = mutate.plan(parsed.pod, max_gpus=converter.max_gpus)
        except mutate.Denied as exc:
            log.info("denied: %s", exc)
            return "denied", _json(review.deny(parsed.uid, f"gvirtus-dra: {exc}"))
        if not plan.patch:
            return "unchanged", _json(review.allow(parsed.uid))
        if not parsed.dry_run:
            try:
                await converter.templates.ensure(namespace=parsed.namespace, counts=plan.templates)
            except errors.KubeError as exc:
                log.warning("cannot create claim templates: %s", exc.message)
                message = (
                    "gvirtus-dra: cannot create the ResourceClaimTemplates the pod needs "
                    f"(retry shortly): {exc.message}"
                )
                return "denied", _json(review.deny(parsed.uid, message, code=503))
        log.info("converted", extra={"claims": plan.claims})
        return "converted", _json(review.allow(parsed.uid, patch=plan.patch))


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _bad(reason: str) -> web.Response:
    return web.Response(status=400, text=reason + "\n")


def build(*, converter: Converter) -> web.Application:
    """The HTTPS application (probes and metrics live on the plain HTTP port)."""
    app = web.Application(
        client_max_size=converter.max_body, middlewares=[connections.mark_request]
    )
    app[CONVERTER] = converter
    app.router.add_post("/mutate", mutate_handler)
    return app
