"""Certificates for tests, made at test time with ``cryptography``: a CA, peers it signs (IP SAN,
serverAuth + clientAuth, as a sidecar needs), another CA and its peer, an expired certificate and
one for another IP. EC P-256 keys: a whole set takes milliseconds."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass(frozen=True)
class Pki:
    ca: str  # CA certificate (PEM file)
    peer: Pair  # signed by ca, IP SAN 127.0.0.1, serverAuth + clientAuth
    other_ca: str
    other_peer: Pair  # signed by other_ca, IP SAN 127.0.0.1
    expired: Pair  # signed by ca, expired yesterday
    wrong_ip: Pair  # signed by ca, IP SAN 127.0.0.2 only


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(d: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    cert_path, key_path = d / f"{stem}.crt", d / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pair(str(cert_path), str(key_path))


def _ca(d: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key, _write(d, stem, cert, key).cert


def _leaf(
    d: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str],
    *,
    ip: str = "127.0.0.1",
    expired: bool = False,
) -> Pair:
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(days=1), now + dt.timedelta(days=30)
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"sidecar {stem}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write(d, stem, cert, key)


def make_pki(d: Path) -> Pki:
    """Every certificate of a ``Pki``, written as PEM files under ``d``."""
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    return Pki(
        ca=ca[2],
        peer=_leaf(d, "peer", ca),
        other_ca=other[2],
        other_peer=_leaf(d, "other-peer", other),
        expired=_leaf(d, "expired", ca, expired=True),
        wrong_ip=_leaf(d, "wrong-ip", ca, ip="127.0.0.2"),
    )
