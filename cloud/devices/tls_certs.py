"""The broker's TLS material: a private CA, a server certificate it signs, and (for mutual TLS)
a client certificate per device whose CN is the device's MQTT client id.

Keys are ECDSA P-256: the smallest handshake an ESP32's Mbed TLS verifies quickly, and what
Mosquitto's OpenSSL takes. The CA lives in the registry (its key 0600 in `secrets/`) and is made
once, so regenerating the broker's files never invalidates the CA on the devices' flash; the
server certificate is re-signed on every `tendril device mosquitto-config`.
Operators with their own PKI pass --ca-cert/--server-cert/--server-key instead; `check_server`
refuses a set that would not work (key not matching, certificate not signed by that CA).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime common TLS clients still accept
_BACKDATE = datetime.timedelta(hours=1)  # a device clock a little behind still accepts a fresh cert


class CertError(ValueError):
    """Unusable TLS material; the message says which file and why."""


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tendril"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(now: datetime.datetime, common_name: str = "Tendril MQTT CA") -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _load_ca(ca: Pem) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert)
    key = serialization.load_pem_private_key(ca.key, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key must be an EC key (made by tendril device mosquitto-config)")
    return cert, key


def _san(hostnames: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hostnames):  # ordered, no duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _leaf(ca: Pem, now: datetime.datetime, common_name: str, server: bool, hostnames: Iterable[str] = ()) -> Pem:
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _BACKDATE).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(_san(hostnames), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_server(ca: Pem, now: datetime.datetime, hostnames: Iterable[str]) -> Pem:
    """The broker's certificate: every name and address clients dial is a subjectAltName
    (clients check the name; the CN is not looked at)."""
    names = list(hostnames)
    if not names:
        raise CertError("the server certificate needs at least one host name or address")
    return _leaf(ca, now, names[0], True, names)


def make_client(ca: Pem, now: datetime.datetime, client_id: str) -> Pem:
    """A device's certificate for mutual TLS: CN = its MQTT client id (docs/security.md)."""
    return _leaf(ca, now, client_id, False)


def check_server(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> list[str]:
    """The operator's own files: PEM, the key matches the certificate, the CA signed it. Returns
    the certificate's subjectAltNames (what clients may dial); CertError says what is wrong."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise CertError(f"--ca-cert is not a PEM certificate ({exc})") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"--server-cert is not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"--server-key is not an unencrypted PEM private key ({exc})") from None
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertError("--server-key does not belong to --server-cert")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertError(f"--server-cert was not issued by --ca-cert ({exc or 'bad signature'})") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError("--server-cert has no subjectAltName: clients that check the host name refuse it") from None
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
        [str(n) for n in san.get_values_for_type(x509.IPAddress)]
