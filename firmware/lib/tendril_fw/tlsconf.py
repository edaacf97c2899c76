# TLS for the MQTT link: one SSLContext per boot, made by the board (boards/*/board.py
# `mqtt_tls`) from the config's tls keys, then handed to every MQTTClient. The same code runs
# on the unix port and on an ESP32: both ship MicroPython's `ssl` over Mbed TLS.
#
# The broker is verified (CERT_REQUIRED: MicroPython's ssl.SSLContext defaults to CERT_NONE)
# against the CA on flash, and its certificate must name server_hostname. Made once, because
# every context holds the parsed CA in the heap; reconnects reuse it.

import binascii

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _der(value):
    # type: (str) -> bytes
    """A config value (PEM text, or the path of a PEM or DER file on flash) as DER: this port's
    Mbed TLS is built without its PEM parser (PEM gives "invalid cert"). A PEM file with several
    certificates: the first one only."""
    if value.lstrip().startswith("-----BEGIN"):
        data = value.encode()
    else:
        with open(value, "rb") as f:
            data = f.read()
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data  # DER already
    lines = data.split(b"\n")
    start = [i for i, line in enumerate(lines) if line.startswith(b"-----BEGIN")][0]
    end = [i for i, line in enumerate(lines) if line.startswith(b"-----END")][0]
    return binascii.a2b_base64(b"".join(line.strip() for line in lines[start + 1:end]))


def context(cfg):
    # type: (dict[str, Any]) -> Any
    """The broker-verifying context, or None when the config says cleartext."""
    if not cfg["tls"]:
        return None
    import ssl  # only TLS devices pay its heap

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=_der(cfg["ca"]))
    if cfg["client_cert"] is not None:
        ctx.load_cert_chain(_der(cfg["client_cert"]), _der(cfg["client_key"]))
    return ctx


def server_hostname(cfg):
    # type: (dict[str, Any]) -> str
    return cfg["server_hostname"] or cfg["broker_host"]
