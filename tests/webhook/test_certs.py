"""The webhook's certificates: made once, shared through the Secret, renewed without a hitch."""

from __future__ import annotations

import asyncio
import base64
import datetime
import pathlib
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from tests.support import objects
from tests.support.apiserver import APIServer
from tests.webhook.conftest import (
    CONFIGURATION,
    NAMESPACE,
    SECRET,
    SERVER_NAME,
    Webhook,
    configuration,
)
from webhook import certs

MakeWebhook = Callable[..., Coroutine[Any, Any, Webhook]]
DAY = datetime.timedelta(days=1)


async def served_certificate(webhook: Webhook, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate a new connection is given (verified against ``context``)."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", webhook.port, ssl=context, server_hostname=SERVER_NAME
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        await writer.wait_closed()


def secret_bundle(apiserver: APIServer) -> certs.Bundle:
    secret = apiserver.get("secrets", SECRET, NAMESPACE)
    assert secret is not None
    return certs.Bundle.from_secret_data(secret["data"])


def seed_secret(apiserver: APIServer, bundle: certs.Bundle) -> None:
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "data": bundle.to_secret_data(),
        }
    )


def bundle(*, serving_days: float, ca: certs.KeyPair | None = None) -> certs.Bundle:
    ca = ca or certs.new_ca(common_name="seeded CA", valid_for=3650 * DAY)
    serving = certs.new_serving(
        ca=ca,
        dns_names=certs.service_names("gvirtus-dra-webhook", NAMESPACE),
        valid_for=serving_days * DAY,
    )
    return certs.Bundle(ca, serving)


def secret_writes(apiserver: APIServer) -> list[str]:
    return [r.method for r in apiserver.writes() if "/secrets" in r.path]


async def test_first_start_makes_a_ca_and_a_serving_certificate_and_publishes_the_ca(
    webhook: Webhook, apiserver: APIServer
) -> None:
    secret = apiserver.get("secrets", SECRET, NAMESPACE)
    assert secret is not None
    assert secret["type"] == "kubernetes.io/tls"
    assert sorted(secret["data"]) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    made = secret_bundle(apiserver)
    assert made.serving.dns_names() == {
        "gvirtus-dra-webhook",
        "gvirtus-dra-webhook.gvirtus-system",
        "gvirtus-dra-webhook.gvirtus-system.svc",
        "gvirtus-dra-webhook.gvirtus-system.svc.cluster.local",
    }
    assert 89 * DAY < made.serving.remaining() <= 90 * DAY
    assert made.ca.remaining() > 3649 * DAY
    stored = apiserver.get("mutatingwebhookconfigurations", CONFIGURATION)
    assert stored is not None
    assert base64.b64decode(stored["webhooks"][0]["clientConfig"]["caBundle"]) == made.ca.cert_pem
    served = await served_certificate(webhook, webhook.ssl_context(made.ca.cert_pem))
    assert served.serial_number == made.serving.certificate.serial_number


async def test_replicas_and_restarts_reuse_the_certificate_in_the_secret(
    apiserver: APIServer, make_webhook: MakeWebhook
) -> None:
    apiserver.put(configuration())
    first = await make_webhook()
    made = secret_bundle(apiserver)
    writes = secret_writes(apiserver)

    second = await make_webhook()
    first.stop()
    restarted = await make_webhook()

    assert secret_writes(apiserver) == writes == ["POST"]
    context = second.ssl_context(made.ca.cert_pem)
    for webhook in (second, restarted):
        served = await served_certificate(webhook, context)
        assert served.serial_number == made.serving.certificate.serial_number


async def test_replicas_starting_together_agree_on_one_ca(
    apiserver: APIServer, make_webhook: MakeWebhook
) -> None:
    apiserver.put(configuration())

    started = await asyncio.gather(*(make_webhook() for _ in range(3)))

    made = secret_bundle(apiserver)
    context = started[0].ssl_context(made.ca.cert_pem)
    serials = {(await served_certificate(w, context)).serial_number for w in started}
    assert serials == {made.serving.certificate.serial_number}
    stored = apiserver.get("mutatingwebhookconfigurations", CONFIGURATION)
    assert stored is not None
    assert base64.b64decode(stored["webhooks"][0]["clientConfig"]["caBundle"]) == made.ca.cert_pem


async def test_a_certificate_close_to_expiry_is_renewed_with_the_same_ca(
    apiserver: APIServer, make_webhook: MakeWebhook
) -> None:
    apiserver.put(configuration())
    old = bundle(serving_days=10)
    seed_secret(apiserver, old)

    webhook = await make_webhook()

    renewed = secret_bundle(apiserver)
    assert renewed.ca == old.ca
    assert renewed.serving != old.serving
    assert renewed.serving.remaining() > 89 * DAY
    served = await served_certificate(webhook, webhook.ssl_context(old.ca.cert_pem))
    assert served.serial_number == renewed.serving.certificate.serial_number


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="empty"),
        pytest.param({"tls.crt": "bm90IGEgY2VydA==", "tls.key": "eA=="}, id="no-ca"),
        pytest.param(
            {k: base64.b64encode(b"garbage").decode() for k in certs.SECRET_KEYS}, id="garbage"
        ),
    ],
)
async def test_an_unusable_secret_is_replaced(
    apiserver: APIServer, make_webhook: MakeWebhook, data: dict[str, str]
) -> None:
    apiserver.put(configuration())
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "data": data,
        }
    )

    webhook = await make_webhook()

    made = secret_bundle(apiserver)
    served = await served_certificate(webhook, webhook.ssl_context(made.ca.cert_pem))
    assert served.serial_number == made.serving.certificate.serial_number
    assert webhook.process is not None
    assert "holds no usable certificate" in webhook.process.logs()


async def test_renewal_under_load_fails_no_request(webhook: Webhook, apiserver: APIServer) -> None:
    """Clients keep posting while the certificate is renewed; every review is answered."""
    ca = secret_bundle(apiserver).ca
    context = webhook.ssl_context(ca.cert_pem)
    before = (await served_certificate(webhook, context)).serial_number
    failures: list[str] = []
    answered = 0
    done = asyncio.Event()

    async def client(fresh_connections: bool) -> None:
        nonlocal answered
        while not done.is_set():
            try:
                if fresh_connections:
                    await served_certificate(webhook, context)
                status, _ = await webhook.post(objects.admission_review(), context=context)
                if status != 200:
                    failures.append(str(status))
                answered += 1
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                failures.append(repr(exc))

    clients = [asyncio.create_task(client(i % 2 == 1)) for i in range(16)]
    await asyncio.sleep(0.5)
    seed_secret(apiserver, bundle(serving_days=10, ca=ca))  # as if 80 days had passed
    async with asyncio.timeout(15):
        while (await served_certificate(webhook, context)).serial_number == before:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    done.set()
    await asyncio.gather(*clients)

    assert failures == []
    assert answered > 100
    renewed = secret_bundle(apiserver)
    assert renewed.serving.remaining() > 89 * DAY, "renewed, not just reloaded"
    assert (await served_certificate(webhook, context)).serial_number == (
        renewed.serving.certificate.serial_number
    )


async def test_cert_manager_mode_serves_files_touches_no_secret_and_reloads_new_files(
    apiserver: APIServer, make_webhook: MakeWebhook, short_tmp: pathlib.Path
) -> None:
    apiserver.put(configuration())
    first = bundle(serving_days=90)
    cert_file, key_file = short_tmp / "tls.crt", short_tmp / "tls.key"
    cert_file.write_bytes(first.serving.cert_pem)
    key_file.write_bytes(first.serving.key_pem)

    webhook = await make_webhook("--cert-file", str(cert_file), "--key-file", str(key_file))

    context = webhook.ssl_context(first.ca.cert_pem)
    assert (await served_certificate(webhook, context)).serial_number == (
        first.serving.certificate.serial_number
    )
    second = bundle(serving_days=90, ca=first.ca)
    key_file.write_bytes(second.serving.key_pem)
    cert_file.write_bytes(second.serving.cert_pem)
    async with asyncio.timeout(10):
        while (await served_certificate(webhook, context)).serial_number != (
            second.serving.certificate.serial_number
        ):
            await asyncio.sleep(0.1)
    assert apiserver.get("secrets", SECRET, NAMESPACE) is None
    stored = apiserver.get("mutatingwebhookconfigurations", CONFIGURATION)
    assert stored is not None
    assert "caBundle" not in stored["webhooks"][0]["clientConfig"]


async def test_cert_manager_mode_without_the_files_stops_with_a_clear_error(
    apiserver: APIServer, make_webhook: MakeWebhook, short_tmp: pathlib.Path
) -> None:
    missing = short_tmp / "nowhere" / "tls.crt"

    with pytest.raises(RuntimeError) as failed:
        await make_webhook("--cert-file", str(missing), "--key-file", str(missing))

    assert "cannot get a serving certificate" in str(failed.value)
    assert str(missing) in str(failed.value)
