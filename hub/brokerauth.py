"""Broker credentials follow enrolment: the hub keeps Mosquitto's dynamic-security clients and roles in step with its devices.

Every approved device is a dynamic-security client whose user name and client id are its
device id and whose password the hub derives from its own signing key and the device's key id
(`device_password`): nothing new is stored, every hub process that shares the signing key
derives the same one, and enrolment hands it to the gateway (OXP §9).  The client's one role
lets it publish only its own ``batch``, ``status`` and ``notice`` topics and subscribe only to
its own ``ack``, ``status/ack`` and ``desired``, and to ``oxp/v1/<device id>`` itself, where the
hub answers a batch by name (OXP §8.6): being granted that topic is how a gateway knows it may ask
for it.  A role made before that grant existed gets it added (Mosquitto then disconnects the
device once, and its next connection asks).  A device revoked, or no longer enrolled, loses its
client: Mosquitto disconnects it at once and refuses it from then on.

Why the dynamic-security plugin and not generated password and ACL files: its commands travel
over MQTT on the session the hub already holds, so they work wherever the broker runs, take
effect in the broker within milliseconds, and need no shared file system or signal to the
broker process; the broker writes the state to its own file, so it survives a broker restart.
Enrolment and revocation may happen in another process (``ocn-edge hub device revoke``), so
the hub compares the store with what it granted about every second rather than waiting for
an event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from itertools import count
from typing import Any

import aiomqtt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.store import Store

__all__ = ["BROKER_PASSWORDS", "BrokerAccess", "BrokerError", "CONTROL_TOPIC", "device_acls", "device_password"]

log = logging.getLogger("ocn.hub.mqtt")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
HUB_ROLE = "ocn-hub"
DEVICE_ROLE_PREFIX = "oxp-device-"
DEVICE_TEXT = "OXP device (managed by the hub)"
SYNC_S = 1.0
# Set on the hub's application when it keeps broker credentials: enrolment then hands each gateway its password.
BROKER_PASSWORDS = web.AppKey("broker_passwords", bool)
_ANSWER_S = 10.0


def device_password(signing_key: Ed25519PrivateKey, key_id: bytes) -> str:
    """The broker password of the device whose key id is ``key_id``: an HMAC under a key only the hub's signing key gives."""
    raw = signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    secret = hashlib.sha256(b"OXP broker passwords\0" + raw).digest()
    return base64.urlsafe_b64encode(hmac.new(secret, key_id, hashlib.sha256).digest()).rstrip(b"=").decode()


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """What one device may do on the broker: publish its own messages, subscribe to its own answers; nothing else."""
    root = f"oxp/v1/{device_id}"
    acls = [{"acltype": "publishClientSend", "topic": f"{root}/{kind}", "allow": True} for kind in ("batch", "status", "notice")]
    for answers in (f"{root}/ack", f"{root}/status/ack", f"{root}/desired", root):
        acls.append({"acltype": "subscribeLiteral", "topic": answers, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": answers, "allow": True})
    return acls


# The hub's own role: take every device's messages through the shared subscription, answer on every device's topics.
_HUB_ACLS = [
    {"acltype": "publishClientSend", "topic": "oxp/v1/#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "oxp/v1/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "oxp/v1/#", "allow": True},
]
# Everything a client is not granted by a role is refused: publishing, receiving and subscribing.
_DEFAULT_DENY = [{"acltype": kind, "allow": False} for kind in ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")]


class BrokerError(Exception):
    """The broker refused or did not answer a dynamic-security command; the message says which and why."""


class BrokerAccess:
    """Keeps the broker's clients for devices in step with the store, over one MQTT session with dynamic-security admin rights."""

    def __init__(self, store: Store, signing_key: Ed25519PrivateKey, *, hub_user: str) -> None:
        self.store = store
        self.signing_key = signing_key
        self.hub_user = hub_user
        self.granted: dict[str, bytes] = {}  # device id -> the key id its password was derived from
        self.synced = asyncio.Event()  # set after each pass that left the broker in step with the store
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = count()
        self._failing = False
        self.rights_changed = False  # the hub's own roles were just changed: the broker is about to disconnect it

    @staticmethod
    def subscriptions() -> list[tuple[str, int]]:
        return [(RESPONSE_TOPIC, 1)]

    def answered(self, message: aiomqtt.Message) -> bool:
        """Take the broker's answer to our commands; False for a message that is not one."""
        if not message.topic.matches(RESPONSE_TOPIC):
            return False
        try:
            responses = json.loads(message.payload if isinstance(message.payload, bytes | bytearray | str) else b"").get("responses", [])
        except (ValueError, AttributeError):
            return True
        for response in responses if isinstance(responses, list) else []:
            future = self._answers.get(str(response.get("correlationData", ""))) if isinstance(response, dict) else None
            if future is not None and not future.done():
                future.set_result(response)
        return True

    async def _command(self, client: aiomqtt.Client, command: Mapping[str, Any], *, tolerate: tuple[str, ...] = ()) -> dict[str, Any]:
        """Send one command and wait for its answer; raise BrokerError unless it succeeded or failed with a tolerated error."""
        tag = f"ocn-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[tag] = future
        try:
            await client.publish(CONTROL_TOPIC, json.dumps({"commands": [dict(command, correlationData=tag)]}).encode(), qos=1)
            async with asyncio.timeout(_ANSWER_S):
                answer = await future
        except TimeoutError:
            raise BrokerError(f"the broker did not answer {command['command']} within {_ANSWER_S:g} s: is the dynamic-security plugin loaded?") from None
        finally:
            del self._answers[tag]
        error = answer.get("error")
        if error and not any(text in str(error) for text in tolerate):
            raise BrokerError(f"the broker refused {command['command']}: {error}")
        return answer

    async def _prepare(self, client: aiomqtt.Client) -> None:
        """The hub's own role and rights, deny by default, and the devices granted before (their clients carry our text name)."""
        await self._command(client, {"command": "createRole", "rolename": HUB_ROLE, "acls": _HUB_ACLS}, tolerate=("already exists",))
        if not await self._has_role(client, self.hub_user, HUB_ROLE):
            # The broker disconnects a client whose roles change: run() reconnects at once, with the rights.
            self.rights_changed = True
            await self._command(client, {"command": "addClientRole", "username": self.hub_user, "rolename": HUB_ROLE})
        await self._command(client, {"command": "setDefaultACLAccess", "acls": _DEFAULT_DENY})
        listed = await self._command(client, {"command": "listClients", "verbose": True, "count": -1, "offset": 0})
        clients = listed.get("data", {}).get("clients", [])
        # A key id unknown here (b""): the next pass sets the password again.
        self.granted = {str(c["username"]): b"" for c in clients if isinstance(c, dict) and c.get("textname", c.get("textName")) == DEVICE_TEXT}

    async def _complete_role(self, client: aiomqtt.Client, rolename: str, acls: list[dict[str, Any]]) -> None:
        """Add to an existing role the ACLs it lacks (a role made by an older hub lacks the answer topic of OXP §8.6)."""
        found = await self._command(client, {"command": "getRole", "rolename": rolename})
        has = found.get("data", {}).get("role", {}).get("acls", [])
        held = {(a.get("acltype"), a.get("topic"), a.get("allow")) for a in has if isinstance(a, dict)}
        for acl in acls:
            if (acl["acltype"], acl["topic"], acl["allow"]) not in held:
                await self._command(client, {"command": "addRoleACL", "rolename": rolename, **acl}, tolerate=("already exists",))

    async def _has_role(self, client: aiomqtt.Client, username: str, rolename: str) -> bool:
        """Whether the broker's client ``username`` has the role (adding a role it has is an error in Mosquitto 2.0)."""
        found = await self._command(client, {"command": "getClient", "username": username})
        roles = found.get("data", {}).get("client", {}).get("roles", [])
        return any(isinstance(role, dict) and role.get("rolename") == rolename for role in roles)

    async def keep(self, client: aiomqtt.Client) -> None:
        """Bring the broker in step with the store now and about every second, until cancelled.

        A broker that refuses (no dynamic-security plugin, the hub's user not its admin) is logged once and asked
        again; batches from devices granted before keep flowing meanwhile.
        """
        prepared = False
        while True:
            try:
                if not prepared:
                    await self._prepare(client)
                    prepared = True
                await self._sync(client)
            except BrokerError as exc:
                if not self._failing:
                    self._failing = True
                    log.error("cannot update the broker's device credentials", extra={"error": str(exc)})
            else:
                if self._failing:
                    self._failing = False
                    log.info("broker device credentials in step again")
                self.synced.set()
            await asyncio.sleep(SYNC_S)

    async def _sync(self, client: aiomqtt.Client) -> None:
        wanted = {d.device_id: d.key_id for d in await self.store.devices() if d.status == "active"}
        for device_id in [d for d in self.granted if d not in wanted]:
            await self._command(client, {"command": "deleteClient", "username": device_id}, tolerate=("not found",))
            await self._command(client, {"command": "deleteRole", "rolename": DEVICE_ROLE_PREFIX + device_id}, tolerate=("not found",))
            del self.granted[device_id]
            log.info("broker access removed", extra={"device": device_id})
        for device_id, kid in wanted.items():
            if self.granted.get(device_id) == kid:
                continue
            password = device_password(self.signing_key, kid)
            role = DEVICE_ROLE_PREFIX + device_id
            made = await self._command(client, {"command": "createRole", "rolename": role, "acls": device_acls(device_id)}, tolerate=("already exists",))
            if made.get("error"):  # made before (another hub process, a restart, an older hub): give it what it lacks
                await self._complete_role(client, role, device_acls(device_id))
            created = await self._command(
                client,
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "clientid": device_id,
                    "textname": DEVICE_TEXT,
                    "roles": [{"rolename": role}],
                },
                tolerate=("already exists",),
            )
            if created.get("error"):  # granted before (another hub process, or before a restart): make sure of its password and role
                await self._command(client, {"command": "setClientPassword", "username": device_id, "password": password})
                if not await self._has_role(client, device_id, role):
                    await self._command(client, {"command": "addClientRole", "username": device_id, "rolename": role})
            if device_id not in self.granted:
                log.info("broker access granted", extra={"device": device_id})
            self.granted[device_id] = kid
