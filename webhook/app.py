"""Wiring of the webhook: certificates, the HTTPS endpoint, probes, renewal.

At start the serving certificate comes from the Secret (created on first start) or
from cert-manager's files, and the CA is published in the MutatingWebhookConfiguration.
Every ``--reload-interval`` the certificate is checked again: renewed when due,
reloaded when another replica renewed it (or cert-manager replaced the files), and
the CA published again if someone re-applied the configuration without it. The same
read of the configuration tells which namespaces the webhook may act in.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging

from aiohttp import web

from dra_driver import __version__, httpserver
from dra_driver.errors import StartupError
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.lifecycle import freeze_startup_objects, stop_on_signals
from webhook import connections, server
from webhook.cabundle import publish_ca_bundle, read_configuration
from webhook.certs import KeyPair
from webhook.scope import Scope
from webhook.secret import SecretCertificates
from webhook.settings import WebhookSettings
from webhook.templates import Templates
from webhook.tls import TLS

log = logging.getLogger(__name__)


class Certificates:
    """Keeps the live TLS context and the namespace scope current."""

    def __init__(
        self, *, settings: WebhookSettings, kube: KubeClient, tls: TLS, scope: Scope
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.tls = tls
        self.scope = scope
        self.secret = SecretCertificates(
            kube=kube,
            namespace=settings.namespace,
            secret=settings.secret,
            service=settings.service,
            valid_for=datetime.timedelta(days=settings.cert_days),
            renew_before=datetime.timedelta(days=settings.renew_days),
        )

    async def refresh(self) -> None:
        """Read the configuration, load the certificate (renewed when due), publish the CA.

        Raises:
            KubeError: the Secret or the configuration could not be read or written.
            OSError: cert-manager's files cannot be read.
        """
        s = self.settings
        current = await read_configuration(self.kube, configuration=s.configuration)
        self.scope.update(current)
        if s.cert_file is not None and s.key_file is not None:
            self.tls.load(KeyPair(s.cert_file.read_bytes(), s.key_file.read_bytes()))
            return
        bundle = await self.secret.current()
        self.tls.load(bundle.serving)
        if current is not None:
            await publish_ca_bundle(self.kube, current=current, ca_pem=bundle.ca.cert_pem)

    async def keep_current(self, stop: asyncio.Event) -> None:
        """Refresh every reload interval until ``stop``; failures are logged and retried."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.reload_interval):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                await self.refresh()
            except (errors.KubeError, OSError, ValueError) as exc:
                log.warning("checking the serving certificate failed (retrying): %s", exc)


async def _serve_https(
    stack: contextlib.AsyncExitStack,
    *,
    settings: WebhookSettings,
    converter: server.Converter,
    tls: TLS,
) -> None:
    """Serve ``/mutate`` through the connection guard until ``stack`` closes.

    Raises:
        StartupError: the port cannot be bound, or too few file descriptors for the cap.
    """
    connections.ensure_file_limit(settings.max_connections + 64)
    connections.small_tls_buffers()
    runner = web.AppRunner(
        server.build(converter=converter),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=settings.idle_timeout,
        # After an early answer (too large, too slow) the rest of the body is read and
        # dropped so the client sees the answer, but for no longer than a request may take.
        lingering_time=settings.request_timeout,
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    assert runner.server is not None
    try:
        listener = connections.listen(settings.address, settings.port, backlog=1024)
    except OSError as exc:
        raise StartupError(f"cannot serve on {settings.address}:{settings.port}: {exc}") from exc
    stack.callback(listener.close)
    guard = connections.Guard(
        limits=connections.Limits(
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
            request_timeout=settings.request_timeout,
        ),
        protocol_factory=runner.server,
        ssl_context=tls.context,
    )
    accepting = asyncio.create_task(guard.serve(listener))

    async def stop_accepting() -> None:
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accepting

    stack.push_async_callback(stop_accepting)


async def run(settings: WebhookSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` (or SIGTERM/SIGINT)."""
    stop = stop or stop_on_signals()
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component="webhook")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)
        tls = TLS()
        scope = Scope(configuration=settings.configuration)
        certificates = Certificates(settings=settings, kube=kube, tls=tls, scope=scope)
        try:
            await certificates.refresh()
        except (errors.KubeError, OSError, ValueError) as exc:
            raise StartupError(f"cannot get a serving certificate: {exc}") from exc
        templates = Templates(
            kube=kube, device_class=settings.device_class, driver=settings.driver_name
        )
        converter = server.Converter(
            templates=templates,
            scope=scope,
            max_gpus=settings.max_gpus,
            max_body=settings.max_body,
            request_timeout=settings.request_timeout,
        )
        watch = asyncio.create_task(templates.watch())
        stack.callback(watch.cancel)
        await _serve_https(stack, settings=settings, converter=converter, tls=tls)
        stopping = asyncio.Event()
        if settings.metrics_port:

            async def tls_loaded() -> str | None:
                return None if tls.loaded is not None else "no serving certificate"

            async def serving() -> str | None:
                return "shutting down" if stopping.is_set() else await tls_loaded()

            async def watching() -> str | None:
                return None if not watch.done() else "the ResourceClaimTemplate watch ended"

            probes = await httpserver.start(
                address=settings.address,
                port=settings.metrics_port,
                health={"tls": tls_loaded, "templates": watching},
                ready={"serving": serving},
            )
            stack.push_async_callback(probes.cleanup)
        keeper = asyncio.create_task(certificates.keep_current(stop))
        log.info(
            "webhook serving",
            extra={
                "version": __version__,
                "port": settings.port,
                "cert_manager": settings.cert_manager,
            },
        )
        freeze_startup_objects()
        await stop.wait()
        stopping.set()
        await keeper
        if settings.shutdown_delay:
            log.info("stopping in %.0fs; not ready meanwhile", settings.shutdown_delay)
            await asyncio.sleep(settings.shutdown_delay)
        log.info("stopping")
