"""Certificates made with ``cryptography``: a CA and the serving certificates it signs.

Pure functions and values, no I/O: :mod:`webhook.secret` decides when to make them
and where they live, :mod:`webhook.tls` serves them. Keys are ECDSA P-256 (fast
handshakes, small PEMs); a serving certificate never outlives its CA.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> datetime.datetime:
        """When the certificate expires (UTC)."""
        return self.certificate.not_valid_after_utc

    def remaining(self, now: datetime.datetime | None = None) -> datetime.timedelta:
        """Time left before it expires."""
        return self.not_after - (now or datetime.datetime.now(datetime.UTC))

    def dns_names(self) -> set[str]:
        """The DNS names in the certificate's subjectAltName."""
        try:
            extension = self.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
        except x509.ExtensionNotFound:
            return set()
        return set(extension.value.get_values_for_type(x509.DNSName))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(*, common_name: str, valid_for: datetime.timedelta) -> KeyPair:
    """A self-signed CA that signs serving certificates only."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _pem(key))


def new_serving(
    *,
    ca: KeyPair,
    dns_names: list[str],
    ips: list[str] | None = None,
    valid_for: datetime.timedelta,
) -> KeyPair:
    """A serving certificate for ``dns_names`` (and ``ips``), signed by ``ca``."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + valid_for, ca.not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _pem(key))


def service_names(service: str, namespace: str) -> list[str]:
    """Every name the API server may use to reach the Service."""
    return [
        f"{service}.{namespace}.svc",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc.cluster.local",
    ]


SECRET_KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")


@dataclass(frozen=True)
class Bundle:
    """The CA and the serving certificate it signed."""

    ca: KeyPair
    serving: KeyPair

    def to_secret_data(self) -> dict[str, str]:
        """The Secret's ``data``: the four PEMs, base64-encoded."""
        values = {
            "ca.crt": self.ca.cert_pem,
            "ca.key": self.ca.key_pem,
            "tls.crt": self.serving.cert_pem,
            "tls.key": self.serving.key_pem,
        }
        return {k: base64.b64encode(v).decode() for k, v in values.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Bundle:
        """Read the Secret's data.

        Raises:
            ValueError: a key is missing or a value is not a certificate or key.
        """
        raw = {k: base64.b64decode(data[k]) for k in SECRET_KEYS}
        bundle = cls(KeyPair(raw["ca.crt"], raw["ca.key"]), KeyPair(raw["tls.crt"], raw["tls.key"]))
        bundle.ca.certificate, bundle.serving.certificate  # noqa: B018 - parse to validate
        serialization.load_pem_private_key(raw["tls.key"], password=None)
        return bundle
