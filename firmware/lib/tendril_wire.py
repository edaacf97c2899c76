# Tendril wire contract: the one place that defines topics and payload fields.
#
# Imported unchanged by the firmware (MicroPython), edge, cloud and hil (CPython).
# That is why it avoids typing, dataclasses, f-strings with format specs that
# MicroPython lacks, and anything outside json/hashlib/binascii.
#
# Topic tree (MQTT), version in the path so v2 devices can coexist with v1:
#   tendril/v1/{site}/{device}/telemetry   device -> cloud, QoS 1, periodic readings
#   tendril/v1/{site}/{device}/state       device -> cloud, QoS 1, health/device state
#   tendril/v1/{site}/{device}/status      device -> cloud, QoS 1, RETAINED online/offline
#                                          (the offline payload is the MQTT last will)
#   tendril/v1/{site}/{device}/cmd         cloud -> device, QoS 1, signed, expiring
#   tendril/v1/{site}/{device}/ack         device -> cloud, QoS 1, accept/refuse a command
#   tendril/v1/{site}/tender               market -> agent, QoS 1, priced offers
#   tendril/v1/{site}/transaction          agent -> market, QoS 1, take (part of) a tender
#   tendril/v1/{site}/confirm              market -> agent, QoS 1, the recorded transaction or
#                                          its refusal, answering one transactionId
#   tendril/v1/_agent/{worker}             agent workers,   QoS 1, RETAINED presence (LWT
#                                          clears it); workers share sites by it
#   tendril/v1/_dead/{reason}              cloud,           invalid messages, with reason

import json

try:
    import hashlib
except ImportError:  # pragma: no cover - every supported interpreter has it
    import uhashlib as hashlib  # type: ignore[import-not-found,no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
ROOT = "tendril/v1"

TELEMETRY = "telemetry"
STATE = "state"
STATUS = "status"
CMD = "cmd"
ACK = "ack"
DEVICE_KINDS = (TELEMETRY, STATE, STATUS, CMD, ACK)
TENDER = "tender"
TRANSACTION = "transaction"
CONFIRM = "confirm"
SITE_KINDS = (TENDER, TRANSACTION, CONFIRM)
DEAD = "_dead"
AGENT = "_agent"

ONLINE = "online"
OFFLINE = "offline"

DEVICE_METER = "meter"
DEVICE_RELAY = "relay"
DEVICE_TYPES = (DEVICE_METER, DEVICE_RELAY)

SIDE_BUY = "BUY"
SIDE_SELL = "SELL"

# Hard limits keep a hostile or broken sender from blowing up a parser or a store.
MAX_ID_LEN = 32
MAX_PAYLOAD = 4096
# Device timestamps must lie in a plausible window (unix seconds): 2020-01-01 .. 2100-01-01.
MIN_TS = 1577836800
MAX_TS = 4102444800


class ContractError(ValueError):
    """A topic or payload that violates the contract; `reason` is a short stable code."""

    def __init__(self, reason, detail=""):
        # type: (str, str) -> None
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- identifiers

_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def check_id(value, what="id"):
    # type: (object, str) -> str
    """Site and device ids: 1..32 chars of [a-z0-9_-]; never MQTT wildcards or '/'."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise ContractError("bad_" + what, repr(value)[:40])
    for ch in value:
        if ch not in _ID_CHARS:
            raise ContractError("bad_" + what, repr(value)[:40])
    return value


# ---------------------------------------------------------------------- topics


def device_topic(site, device, kind):
    # type: (str, str, str) -> str
    if kind not in DEVICE_KINDS:
        raise ContractError("bad_kind", kind)
    return ROOT + "/" + check_id(site, "site") + "/" + check_id(device, "device") + "/" + kind


def site_topic(site, kind):
    # type: (str, str) -> str
    """A site-level topic (tender, transaction, confirm): between market and agent."""
    if kind not in SITE_KINDS:
        raise ContractError("bad_kind", kind)
    return ROOT + "/" + check_id(site, "site") + "/" + kind


def tender_topic(site):
    # type: (str) -> str
    return site_topic(site, TENDER)


def site_filter(kind, site="+"):
    # type: (str, str) -> str
    if kind not in SITE_KINDS:
        raise ContractError("bad_kind", kind)
    if site != "+":
        check_id(site, "site")
    return ROOT + "/" + site + "/" + kind


def agent_topic(worker):
    # type: (str) -> str
    """Retained presence of one agent worker; empty (deleted) when it is gone."""
    return ROOT + "/" + AGENT + "/" + check_id(worker, "worker")


def agent_filter():
    # type: () -> str
    return ROOT + "/" + AGENT + "/+"


def dead_letter_topic(reason):
    # type: (str) -> str
    return ROOT + "/" + DEAD + "/" + reason


def device_filter(kind, site="+", device="+"):
    # type: (str, str, str) -> str
    """Subscription filter for one kind of device topic; '+' matches any site/device."""
    if kind not in DEVICE_KINDS:
        raise ContractError("bad_kind", kind)
    if site != "+":
        check_id(site, "site")
    if device != "+":
        check_id(device, "device")
    return ROOT + "/" + site + "/" + device + "/" + kind


def tender_filter(site="+"):
    # type: (str) -> str
    return site_filter(TENDER, site)


# Home Assistant MQTT discovery (cloud -> HA, retained): an entity config for one reading of
# one device; HA then reads the device's own telemetry/status topics above.
HA_PREFIX = "homeassistant"


def ha_config_topic(component, site, device, key):
    # type: (str, str, str, str) -> str
    return "%s/%s/tendril_%s_%s/%s/config" % (HA_PREFIX, component, check_id(site, "site"),
                                              check_id(device, "device"), key)


def ha_filter():
    # type: () -> str
    return HA_PREFIX + "/#"


def parse_topic(topic):
    # type: (str) -> tuple[str, str, str]
    """Split a device topic into (site, device, kind); a site topic (tender, transaction,
    confirm) gives device ''."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] + "/" + parts[1] != ROOT:
        raise ContractError("bad_topic", topic[:120])
    if len(parts) == 4 and parts[3] in SITE_KINDS:
        return check_id(parts[2], "site"), "", parts[3]
    if len(parts) != 5 or parts[4] not in DEVICE_KINDS:
        raise ContractError("bad_topic", topic[:120])
    return check_id(parts[2], "site"), check_id(parts[3], "device"), parts[4]


# -------------------------------------------------------------------- payloads
#
# Each schema maps field -> (accepted python types, required). `bool` is rejected
# wherever a number is expected (json true is not a reading).

_NUM = (int, float)
_STR = (str,)
_INT = (int,)
_BOOL = (bool,)
# One tuple per (types, required) pair, shared by every schema: a literal per field would make a
# tuple object per field on the device's heap.
_NUM_R = (_NUM, True)
_NUM_O = (_NUM, False)
_STR_R = (_STR, True)
_STR_O = (_STR, False)
_INT_R = (_INT, True)
_INT_O = (_INT, False)
_BOOL_R = (_BOOL, True)
_BOOL_O = (_BOOL, False)

TELEMETRY_FIELDS = {
    "v": _INT_R,
    "seq": _INT_R,
    "ts": _NUM_R,
    "type": _STR_R,
    # meter readings
    "power_w": _NUM_O,
    "energy_wh": _NUM_O,
    # relay readings
    "relay": _INT_O,
    "load_w": _NUM_O,
    # set when the device stamped the record before its clock was synced
    "unsynced": _BOOL_O,
}

STATE_FIELDS = {
    "v": _INT_R,
    "seq": _INT_R,
    "ts": _NUM_R,
    "fw": _STR_R,
    "uptime_s": _NUM_R,
    "free_heap": _INT_O,
    "queue": _INT_O,
    "dropped": _INT_O,
    "reconnects": _INT_O,
    "relay": _INT_O,
    "boot": _STR_O,
}

STATUS_FIELDS = {
    "v": _INT_R,
    "state": _STR_R,
}

CMD_FIELDS = {
    "v": _INT_R,
    "id": _STR_R,
    "seq": _INT_R,
    "issued": _NUM_R,
    "expires": _NUM_R,
    "relay": _INT_R,
    "sig": _STR_R,
}

ACK_FIELDS = {
    "v": _INT_R,
    "id": _STR_R,
    "seq": _INT_R,
    "ts": _NUM_R,
    "ok": _BOOL_R,
    "reason": _STR_R,
    "relay": _INT_R,
}

# TeMIX / OASIS Energy Interoperation tender fields, spelled as in the standard.
TENDER_FIELDS = {
    "v": _INT_R,
    "tenderId": _STR_R,
    "side": _STR_R,
    "intervalStart": _NUM_R,
    "durationS": _INT_R,
    "price": _NUM_R,  # USD per kWh
    "quantity": _NUM_O,  # kWh limit; absent = unlimited
    "expirationTime": _NUM_R,
    "partyId": _STR_R,
    "counterPartyId": _STR_R,
    "marketId": _STR_R,
    "resourceDesignator": _STR_R,
}

# The agent takes `quantity` kWh of a tender. transactionId is the agent's own: a retry with
# the same id (after a lost confirm, a restart, a moved site) is answered with the same confirm
# and recorded once. partyId names the agent (worker) that sent it, for the ledger.
TRANSACTION_FIELDS = {
    "v": _INT_R,
    "transactionId": _STR_R,
    "tenderId": _STR_R,
    "quantity": _NUM_R,  # kWh
    "partyId": _STR_R,
    "ts": _NUM_R,
}

# ok: the transaction as recorded (side .. acceptedAt present, reason ACCEPTED); not ok: the
# refusal, reason one of the TX_REFUSE_* codes and a human detail.
CONFIRM_FIELDS = {
    "v": _INT_R,
    "transactionId": _STR_R,
    "tenderId": _STR_R,
    "ok": _BOOL_R,
    "reason": _STR_R,
    "detail": _STR_O,
    "side": _STR_O,
    "intervalStart": _NUM_O,
    "durationS": _INT_O,
    "quantity": _NUM_O,
    "price": _NUM_O,
    "marketId": _STR_O,
    "acceptedAt": _NUM_O,
}
_CONFIRMED = ("side", "intervalStart", "durationS", "quantity", "price", "marketId", "acceptedAt")
MAX_TX_ID_LEN = 64

SCHEMAS = {
    TELEMETRY: TELEMETRY_FIELDS,
    STATE: STATE_FIELDS,
    STATUS: STATUS_FIELDS,
    CMD: CMD_FIELDS,
    ACK: ACK_FIELDS,
    TENDER: TENDER_FIELDS,
    TRANSACTION: TRANSACTION_FIELDS,
    CONFIRM: CONFIRM_FIELDS,
}


def _check_fields(msg, schema):
    # type: (dict[str, Any], dict[str, Any]) -> dict[str, Any]
    for name in msg:
        if name not in schema:
            raise ContractError("unknown_field", name[:40])
    for name in schema:
        types, required = schema[name]
        if name not in msg:
            if required:
                raise ContractError("missing_field", name)
            continue
        value = msg[name]
        if isinstance(value, bool) and types is not _BOOL:
            raise ContractError("bad_type", name)
        if not isinstance(value, types):
            raise ContractError("bad_type", name)
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            raise ContractError("not_finite", name)
    if msg["v"] != VERSION:
        raise ContractError("bad_version", str(msg["v"]))
    return msg


def _check_ts(msg, name):
    # type: (dict[str, Any], str) -> None
    if not MIN_TS <= msg[name] < MAX_TS:
        raise ContractError("bad_ts", name)


def decode(kind, payload):
    # type: (str, bytes | str) -> dict[str, Any]
    """Parse and validate one payload of the given kind; raises ContractError with a reason."""
    if kind not in SCHEMAS:
        raise ContractError("bad_kind", kind)
    if len(payload) > MAX_PAYLOAD:
        raise ContractError("too_large", str(len(payload)))
    try:
        # MicroPython's stub types loads() with a constrained AnyStr, which rejects the union
        msg = json.loads(payload)  # pyright: ignore[reportArgumentType]
    except (ValueError, UnicodeError, RuntimeError) as exc:
        # RuntimeError: CPython's RecursionError and MicroPython's depth limit on nested arrays
        raise ContractError("bad_json", str(exc)[:80])
    if not isinstance(msg, dict):
        raise ContractError("not_object")
    return validate(kind, msg)


def validate(kind, msg):
    # type: (str, dict[str, Any]) -> dict[str, Any]
    """Validate an already-parsed message (see decode) and return it."""
    if kind not in SCHEMAS:
        raise ContractError("bad_kind", kind)
    _check_fields(msg, SCHEMAS[kind])
    if kind == TELEMETRY:
        _check_ts(msg, "ts")
        if msg["seq"] < 0:
            raise ContractError("bad_seq")
        if msg["type"] == DEVICE_METER:
            if "power_w" not in msg or "energy_wh" not in msg:
                raise ContractError("missing_field", "power_w/energy_wh")
            if msg["energy_wh"] < 0:
                raise ContractError("out_of_range", "energy_wh")
        elif msg["type"] == DEVICE_RELAY:
            if "relay" not in msg or "load_w" not in msg:
                raise ContractError("missing_field", "relay/load_w")
            if msg["relay"] not in (0, 1):
                raise ContractError("out_of_range", "relay")
        else:
            raise ContractError("bad_device_type", msg["type"][:20])
    elif kind == STATE:
        _check_ts(msg, "ts")
    elif kind == STATUS:
        if msg["state"] not in (ONLINE, OFFLINE):
            raise ContractError("out_of_range", "state")
    elif kind == CMD:
        if msg["relay"] not in (0, 1):
            raise ContractError("out_of_range", "relay")
        if not msg["id"] or len(msg["id"]) > 64:
            raise ContractError("bad_id")
    elif kind == ACK:
        _check_ts(msg, "ts")
    elif kind == TENDER:
        if msg["side"] not in (SIDE_BUY, SIDE_SELL):
            raise ContractError("out_of_range", "side")
        if msg["durationS"] <= 0:
            raise ContractError("out_of_range", "durationS")
    elif kind == TRANSACTION:
        if not msg["transactionId"] or len(msg["transactionId"]) > MAX_TX_ID_LEN:
            raise ContractError("bad_id", "transactionId")
        if not msg["tenderId"] or len(msg["tenderId"]) > MAX_TX_ID_LEN:
            raise ContractError("bad_id", "tenderId")
        _check_ts(msg, "ts")
    elif kind == CONFIRM:
        if len(msg["transactionId"]) > MAX_TX_ID_LEN or len(msg["tenderId"]) > MAX_TX_ID_LEN:
            raise ContractError("bad_id")
        if msg["ok"]:
            if msg["reason"] != ACCEPTED:
                raise ContractError("out_of_range", "reason")
            for name in _CONFIRMED:
                if name not in msg:
                    raise ContractError("missing_field", name)
        elif msg["reason"] == ACCEPTED:
            raise ContractError("out_of_range", "reason")
    return msg


def encode(kind, msg):
    # type: (str, dict[str, Any]) -> bytes
    """Validate and serialise; the sender finds its own bugs before the wire does."""
    validate(kind, msg)
    return json.dumps(msg).encode()


# --------------------------------------------------------------- message builders


def telemetry_meter(seq, ts, power_w, energy_wh):
    # type: (int, float, float, float) -> dict[str, Any]
    return {"v": VERSION, "seq": seq, "ts": ts, "type": DEVICE_METER,
            "power_w": power_w, "energy_wh": energy_wh}


def telemetry_relay(seq, ts, relay, load_w):
    # type: (int, float, int, float) -> dict[str, Any]
    return {"v": VERSION, "seq": seq, "ts": ts, "type": DEVICE_RELAY,
            "relay": relay, "load_w": load_w}


def status_payload(online):
    # type: (bool) -> bytes
    return json.dumps({"v": VERSION, "state": ONLINE if online else OFFLINE}).encode()


def ack(cmd_id, seq, ts, ok, reason, relay):
    # type: (str, int, float, bool, str, int) -> dict[str, Any]
    return {"v": VERSION, "id": cmd_id, "seq": seq, "ts": ts, "ok": ok,
            "reason": reason, "relay": relay}


# ------------------------------------------------------------ command signatures
#
# HMAC-SHA256 (RFC 2104) written out because MicroPython has hashlib but no hmac.
# The signed text names the target device so a command cannot be replayed onto
# another device that happens to share nothing but a key.

_BLOCK = 64


def hmac_sha256(key, data):
    # type: (bytes, bytes) -> bytes
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(data)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def _hex(raw):
    # type: (bytes) -> str
    return "".join("%02x" % b for b in raw)


def command_signing_bytes(site, device, cmd):
    # type: (str, str, dict[str, Any]) -> bytes
    # Numbers are rendered by repr-free formatting that both interpreters agree on.
    return ("%s|%s|%s|%d|%d|%d|%d" % (
        site, device, cmd["id"], cmd["seq"], int(cmd["issued"] * 1000),
        int(cmd["expires"] * 1000), cmd["relay"])).encode()


def sign_command(key, site, device, cmd):
    # type: (bytes, str, str, dict[str, Any]) -> str
    return _hex(hmac_sha256(key, command_signing_bytes(site, device, cmd)))


def make_command(key, site, device, cmd_id, seq, issued, expires, relay):
    # type: (bytes, str, str, str, int, float, float, int) -> dict[str, Any]
    cmd = {"v": VERSION, "id": cmd_id, "seq": seq, "issued": issued,
           "expires": expires, "relay": relay, "sig": ""}
    cmd["sig"] = sign_command(key, site, device, cmd)
    return cmd


def verify_command(key, site, device, cmd):
    # type: (bytes, str, str, dict[str, Any]) -> bool
    expected = sign_command(key, site, device, cmd)
    got = cmd.get("sig", "")
    if len(got) != len(expected):
        return False
    diff = 0  # constant time: do not leak how many leading characters matched
    for a, b in zip(expected, got):
        diff |= ord(a) ^ ord(b)
    return diff == 0


# --------------------------------------------------------------------- command refusal reasons
REFUSE_EXPIRED = "expired"
REFUSE_REPLAYED = "replayed"
REFUSE_OUT_OF_ORDER = "out_of_order"
REFUSE_BAD_SIG = "bad_signature"
REFUSE_MIN_OFF = "min_off_time"
REFUSE_MIN_ON = "min_on_time"
REFUSE_INVALID = "invalid"
REFUSE_MAX_SWITCHES = "max_switches"
REFUSE_OVERRIDE = "local_override"
ACCEPTED = "accepted"
# Unsolicited acks (id OVERRIDE_ACK_ID, seq -1) report the local button taking or giving back control.
OVERRIDE_ACK_ID = "override"
OVERRIDE_ON = "local_override"
OVERRIDE_OFF = "override_released"


# ------------------------------------------------------------ transaction refusal reasons
# What a confirm with ok false says; the market records the refusal with the same code.
TX_REFUSE_UNKNOWN = "unknown_tender"
TX_REFUSE_WRONG_PARTY = "wrong_party"
TX_REFUSE_EXPIRED = "tender_expired"
TX_REFUSE_OVER_QUANTITY = "over_quantity"
TX_REFUSE_BAD_QUANTITY = "bad_quantity"
TX_REFUSE_MALFORMED = "malformed"  # the transaction broke this contract (detail says how)
TX_REFUSE_CONFLICT = "id_conflict"  # a transactionId reused for different terms


# ------------------------------------------------------------------ device heap
# Market, agent and Home Assistant speak parts of this contract a device never does. A device
# drops them once it has booted, so an ESP32-sized heap gets their schemas and code back; the
# module stays the one contract everything imports, and the cloud never calls this.
_CLOUD_ONLY = ("TRANSACTION_FIELDS", "CONFIRM_FIELDS", "TENDER_FIELDS", "_CONFIRMED", "site_filter", "agent_topic",
               "site_topic", "tender_topic", "tender_filter", "parse_topic", "make_command", "decode", "HA_PREFIX",
               "agent_filter", "ha_config_topic", "ha_filter", "dead_letter_topic", "device_filter",
               "TX_REFUSE_UNKNOWN", "TX_REFUSE_WRONG_PARTY", "TX_REFUSE_EXPIRED", "TX_REFUSE_OVER_QUANTITY",
               "TX_REFUSE_BAD_QUANTITY", "TX_REFUSE_MALFORMED", "TX_REFUSE_CONFLICT", "_CLOUD_ONLY",
               "trim_for_device")


def trim_for_device():
    # type: () -> None
    """Drop the cloud-only parts (see above); validate() then refuses the site kinds (tender,
    transaction, confirm), which no device receives or sends."""
    for kind in SITE_KINDS:
        SCHEMAS.pop(kind, None)
    names = globals()
    for name in _CLOUD_ONLY:
        names.pop(name, None)


# --------------------------------------------------------------------- time
# ESP32 MicroPython counts seconds from 2000-01-01, unix from 1970-01-01.
# The wire always carries unix seconds; convert here and nowhere else.
EPOCH_2000_OFFSET = 946684800


def to_unix_time(device_seconds, device_epoch_year):
    # type: (float, int) -> float
    if device_epoch_year == 2000:
        return device_seconds + EPOCH_2000_OFFSET
    return device_seconds
