"""The registry's identities and rights as a Mosquitto dynamic-security plugin file.

Why this plugin and not acl_file (measured on Mosquitto 2.0.11, tests/integration/
test_security_broker.py): acl_file grants every SUBSCRIBE, `$share/...` included, and checks
rights only when delivering, so a device could join ingestion's share group, be handed a share
of the fleet's messages and have them dropped for lack of a read right. The plugin checks every
SUBSCRIBE against subscribe rights (refused with "Not authorized" / 0x80), and a client entry
with a `clientid` may connect only with that id; a device bound to its own id can therefore not
take over ingestion's session (or another device's).

Every client gets one role of its own; default access denies everything but unsubscribing. No
`$CONTROL` user is generated: the registry is the source of truth, and the broker may keep the
file read-only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

from tendril_transactive.cloud.devices.mosquitto import (
    Grant,
    ServiceUser,
    client_id_for,
    device_client_id,
    grants_for,
    password_hash,
)
from tendril_transactive.cloud.devices.registry import DeviceRecord

_WILDCARDS = ("+", "#")


def _acls(grants: Iterable[Grant]) -> list[dict[str, object]]:
    acls: list[dict[str, object]] = []

    def add(acltype: str, topic: str) -> None:
        acls.append({"acltype": acltype, "topic": topic, "priority": 0, "allow": True})

    for g in grants:
        if g.access in ("write", "readwrite"):
            add("publishClientSend", g.topic)
        if g.access in ("read", "readwrite"):
            add("publishClientReceive", g.topic)
            wild = any(level in _WILDCARDS for level in g.topic.split("/"))
            # The plugin matches a subscription's filter against these as a topic: a pattern
            # `a/+/c` admits the filter `a/+/c` and `a/x/c`, never `a/#` nor `#`.
            add("subscribePattern" if wild else "subscribeLiteral", g.topic)
            if g.shared:  # the plugin sees the whole filter, `$share/<group>/` included
                add("subscribePattern", "$share/+/" + g.topic)
    return acls


def _client(username: str, password: str, clientid: str | None, role: str) -> dict[str, object]:
    salt, digest = password_hash(password)
    body: dict[str, object] = {
        "username": username,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
        "roles": [{"rolename": role, "priority": 0}],
    }
    if clientid is not None:
        body["clientid"] = clientid
    return body


def dynsec_json(devices: Iterable[tuple[DeviceRecord, str]], services: Iterable[ServiceUser]) -> str:
    """The plugin's config file (`plugin_opt_config_file`)."""
    clients, roles = [], []
    for record, password in devices:
        role = f"device:{record.username}"
        clients.append(_client(record.username, password, device_client_id(record), role))
        roles.append({"rolename": role, "acls": _acls(grants_for(record))})
    for user in services:
        role = f"{user.role}:{user.username}"
        clients.append(_client(user.username, user.password, client_id_for(user), role))
        roles.append({"rolename": role, "acls": _acls(grants_for(user))})
    doc = {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    return json.dumps(doc, indent=1) + "\n"
