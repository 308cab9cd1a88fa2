"""The live TLS context of the HTTPS endpoint, reloaded in place.

``ssl.SSLContext.load_cert_chain`` on a context that is already serving changes
the certificate for new handshakes only; open connections (the API server keeps
them alive) go on undisturbed. That is what makes renewal drop nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import ssl
import tempfile

from prometheus_client import Gauge

from webhook.certs import KeyPair

log = logging.getLogger(__name__)

EXPIRY = Gauge(
    "gvirtus_dra_webhook_certificate_expiry_timestamp_seconds",
    "When the serving certificate expires.",
)


class TLS:
    """The live server context; loading a new pair affects new handshakes only."""

    def __init__(self) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.fingerprint = ""
        self.loaded: KeyPair | None = None

    def load(self, pair: KeyPair) -> bool:
        """Use ``pair`` from now on; return whether it differs from the current one.

        ``ssl`` reads keys only from files, so the pair passes through a private
        temporary directory that is gone again when this returns.

        Raises:
            ssl.SSLError: the key does not match the certificate, or either is unreadable.
        """
        fingerprint = hashlib.sha256(pair.cert_pem + pair.key_pem).hexdigest()
        if fingerprint == self.fingerprint:
            return False
        with tempfile.TemporaryDirectory(prefix="gvirtus-dra-webhook-") as folder:
            cert, key = pathlib.Path(folder) / "tls.crt", pathlib.Path(folder) / "tls.key"
            cert.write_bytes(pair.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pair.key_pem)
            self.context.load_cert_chain(cert, key)
        self.fingerprint, self.loaded = fingerprint, pair
        EXPIRY.set(pair.not_after.timestamp())
        log.info("serving certificate loaded", extra={"not_after": pair.not_after.isoformat()})
        return True
