"""Applies the hub's desired policy and config: verify, validate, swap in whole — or keep the last good one.

The hub sends a desired document (format in docs/fleet.md) in its answer to a status
report, signed with the hub's key.  The gateway pins that key on first use — only over
https or on loopback, so nobody on the path can plant their own — and keeps it in
``<state_dir>/hub.pub``.  The hub changes that key, and the CA bundle the gateway trusts for an
https hub, through the documents themselves: an announced next key, a chain of key rollovers and a
CA bundle checked against the hub's certificate before it is taken (edge.protocol.hubtrust,
docs/updates.md "Rotating keys").

What the gateway runs is always: the local config file, with the hub's desired config
tables laid over it, and the hub's desired policy if there is one, else the policy file
the config names.  A new document (or a cleared one: ETag "") is turned into that target
and compared with what runs:

- only the **policy** differs: the privacy stage is swapped between two readings
  (``RunningPipeline.swap_policy``);
- the **config** differs: the pipeline is restarted inside the process with the new
  config (memory flushed to the spool first); if it does not start, the last good one
  is started again.

A document that cannot be applied is refused whole, and its ETag is remembered so it
is not tried again until city IT changes it.  Outcomes travel upstream in the status
report: the applied ETag and the policy digest, or the reason for a refusal.

A hub since 2026-12 signs the time it signed each document at (``issued_ms``) and signs its clear
(OXP §8.4, "Freshness and a signed clear").  Once the document in force carries that time, one
issued earlier, one without it, and an unsigned clear are ignored: whoever can answer in the hub's
place (a hostile broker, a plain-http path) cannot play an older document again or return the
gateway to its local config.  What is not the hub's answer for this gateway under that ETag (a
signature that does not verify, another gateway's document, a document under another ETag) is
ignored too, not refused: a refusal sticks to the ETag, and the hub's own document under it must
still be applied when it comes.  Each is said once and reported ("desired <etag> ignored: ...").
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import time
import tomllib
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config import ConfigError, GatewayConfig, effective_toml, only_log_levels_differ, parse_config
from edge.desiredcheck import DesiredCheckError, check_desired_config, check_desired_policy
from edge.privacy import Policy, PolicyError, load_policy, parse_policy
from edge.protocol import hubtrust
from edge.protocol.desired import CLEARED, ISSUED, canonical_json, dotted_log_levels, merge_tables
from edge.protocol.keys import key_id, pem_public_key
from edge.schema import dumps_toml
from edge.transport import HubKeySource, TransportError
from edge.update.updater import SoftwareTarget, TargetError, parse_target
from edge.util.linkwords import ca_bundle_problem, os_words

__all__ = [
    "DesiredApplier",
    "DesiredChange",
    "DesiredError",
    "DesiredIgnored",
    "DesiredState",
    "Reload",
    "RunningPipeline",
    "is_older",
    "last_applied",
    "local_policy",
    "overlay_config",
]

log = logging.getLogger("ocn.desired")

IGNORED_S = 3600.0  # how long an ignored offer stays among the status report's errors (a refusal stays until the next success)

class DesiredError(Exception):
    """A desired document cannot be applied; the message says why in one line."""


class _TryLater(Exception):
    """A desired document that cannot be applied now for a passing reason (the hub unreachable): not refused."""


class DesiredIgnored(Exception):
    """Not the hub's answer for this gateway now: unverified, another gateway's or another ETag's, or older than the
    document in force.  Ignored and reported, not refused (a refusal would stick to an ETag whoever sent it)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # said once per ETag and kind, whatever numbers the reason carries


@dataclass(frozen=True, slots=True)
class DesiredChange:
    """A verified desired document, split into what it asks for (None: the local one)."""

    etag: str
    policy: Mapping[str, Any] | None
    config: Mapping[str, Any] | None
    software: SoftwareTarget | None = None  # the release the hub wants running (docs/updates.md); None: none named
    ca: bytes | None = None  # the CA bundle the hub gives for its https certificate (trust.ca); None: [uplink] ca
    issued_ms: int | None = None  # when the hub signed it (OXP §8.4); None: a hub from before issue times


@dataclass(frozen=True)
class Reload:
    """A validated config (and policy, None = the file the config names) to replace the running pipeline."""

    config: GatewayConfig
    policy: Policy | None
    change: DesiredChange
    policy_toml: str | None


class RunningPipeline(Protocol):
    """What the applier may see and do of the running gateway: its config and policy, a policy swap, a task kept until stop."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def stopped(self) -> bool: ...

    def check_policy(self, policy: Policy) -> None:
        """Raise PolicyError if ``policy`` does not fit the running devices' channels; changes nothing."""
        ...

    def swap_policy(self, policy: Policy) -> None:
        """Put a policy that passed `check_policy` in force between two readings."""
        ...

    def take_log_levels(self, config: GatewayConfig) -> None:
        """Run under ``config``, which differs from the running config only in its log levels: they apply at once."""
        ...

    def keep_until_stop(self, task: asyncio.Task[None]) -> None:
        """Cancel ``task`` when the pipeline stops, if it still runs."""
        ...


def local_policy(config: GatewayConfig) -> Policy:
    """The policy file ``config`` names, loaded as ``[privacy]`` says (raises PolicyError)."""
    return load_policy(
        config.privacy.policy,
        governance_key=config.privacy.governance_key or None,
        require_signed=config.privacy.require_signed,
    )


def overlay_config(base_toml: str, overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The effective config's tables with the hub's desired tables laid over them."""
    # The effective config writes each logger's name whole; a hub's document does too (hub.fleet.check_desired).
    return merge_tables(tomllib.loads(base_toml), dotted_log_levels(overlay))


def _replace(path: Path, content: bytes | None, what: str) -> None:
    """``path`` holds ``content`` (None: is absent), written atomically, logged when it changes."""
    if content == (path.read_bytes() if path.exists() else None):
        return
    if content is None:
        path.unlink()
        log.info(f"forgot {what}", extra={"path": str(path)})
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, content)
        log.info(f"kept {what} from the signed desired document", extra={"path": str(path)})


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DesiredState:
    """What the hub asked for, what was applied or refused, and the pinned hub key; survives restarts."""

    def __init__(self, state_dir: str | os.PathLike[str], *, device_id: str) -> None:
        self.dir = Path(state_dir) / "desired"
        self.hub_key_path = Path(state_dir) / "hub.pub"
        self.next_hub_key_path = Path(state_dir) / "hub.next.pub"  # announced by the hub, accepted beside hub.pub (docs/updates.md)
        self.hub_ca_file = Path(state_dir) / "hub-ca.pem"  # the CA bundle the hub's documents carry
        self.device_id = device_id
        self.applied_etag = ""
        self.applied_issued_ms: int | None = None  # when the hub signed the document (or clear) in force; None: never said
        self.refused_etag = ""
        # The ETag in force when a clear was refused: not tried again while it is, in this process (every pipeline shares this).
        self.clear_refused_for: str | None = None
        self.last_error = ""
        self._ignored: tuple[float, str] | None = None  # (monotonic time, report) of the last offer ignored, reported for IGNORED_S
        self._load()

    # -- persistence ------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any]:
        try:
            record = json.loads((self.dir / name).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _load(self) -> None:
        applied = self._read("applied.json")
        self.applied_etag = str(applied.get("etag", ""))
        issued = applied.get(ISSUED)
        self.applied_issued_ms = issued if _is_time(issued) else None
        refused = self._read("refused.json")
        self.refused_etag = str(refused.get("etag", ""))
        self.last_error = str(refused.get("error", ""))

    def saved_policy_path(self) -> Path | None:
        """The hub's policy last applied, as a TOML file (None: the config's own policy file is in force)."""
        path = self.dir / "policy.toml"
        return path if path.exists() else None

    def saved_config_overlay(self) -> Mapping[str, Any] | None:
        """The hub's config tables last applied, laid over the local file at start (None if there are none)."""
        record = self._read("config.json")
        return record or None

    def saved_software(self) -> SoftwareTarget | None:
        """The hub's software target last applied (None: none), for the updater at start."""
        record = self._read("software.json")
        try:
            return parse_target(record) if record else None
        except TargetError:
            return None

    def record_success(self, change: DesiredChange, *, policy_toml: str | None) -> None:
        """Remember what is in force now; a part the document leaves out reverts to the local file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, content in (
            ("policy.toml", policy_toml.encode() if policy_toml is not None else None),
            ("config.json", canonical_json(change.config) if change.config is not None else None),
            ("software.json", canonical_json(change.software.as_json()) if change.software is not None else None),
        ):
            if content is None:
                (self.dir / name).unlink(missing_ok=True)
            else:
                _write_atomically(self.dir / name, content)
        applied: dict[str, Any] = {"etag": change.etag}
        if change.issued_ms is not None:
            applied[ISSUED] = change.issued_ms
        _write_atomically(self.dir / "applied.json", canonical_json(applied))
        (self.dir / "refused.json").unlink(missing_ok=True)
        self.applied_etag = change.etag
        self.applied_issued_ms = change.issued_ms
        self.refused_etag = ""
        self.clear_refused_for = None
        self.last_error = ""
        self._ignored = None
        log.info("desired state applied", extra={"etag": change.etag or "(local config)"})

    def record_failure(self, etag: str, reason: str) -> None:
        """Keep the last good state; remember the refusal and report it upstream, logged once per document.

        A refused clear (``etag`` "": the local config does not start, say) is not tried again while the document it would
        have replaced stays in force, until the gateway restarts (it may have been passing: a port in use)."""
        self.last_error = f"desired {etag or 'clear'} not applied: {reason}"[:500]
        clear_for = self.applied_etag if not etag else None
        if etag != self.refused_etag or clear_for != self.clear_refused_for:
            log.warning("desired state refused; keeping the last good one", extra={"etag": etag or "(clear)", "reason": reason})
        self.refused_etag = etag
        self.clear_refused_for = clear_for
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.dir / "refused.json", canonical_json({"etag": etag, "error": self.last_error}))
        except OSError as exc:  # the refusal is still held in memory and reported
            log.warning("cannot record the refusal on disk", extra={"error": str(exc)})

    # -- the hub key ------------------------------------------------------------------------

    def hub_key(self) -> Ed25519PublicKey | None:
        try:
            pem = self.hub_key_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            key = pem_public_key(pem)
        except ValueError as exc:
            raise DesiredError(f"{self.hub_key_path}: not a PEM public key ({exc}); delete it to pin the hub's key again") from None
        if not isinstance(key, Ed25519PublicKey):
            raise DesiredError(f"{self.hub_key_path}: not an Ed25519 public key")
        return key

    def pin_hub_key(self, pem: bytes) -> Ed25519PublicKey:
        try:
            key = pem_public_key(pem)
        except ValueError as exc:
            raise DesiredError(f"the hub's key is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise DesiredError("the hub's key is not an Ed25519 public key")
        self.hub_key_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.hub_key_path, pem)
        log.info("pinned the hub's signing key", extra={"path": str(self.hub_key_path)})
        return key

    def announced_hub_key(self) -> Ed25519PublicKey | None:
        """The key the hub announced it will sign with next (hubtrust.NEXT_KEY), accepted beside the pinned one."""
        try:
            return hubtrust.load_pem(self.next_hub_key_path.read_bytes(), where=str(self.next_hub_key_path))
        except (OSError, hubtrust.TrustError):
            return None

    def hub_ca_bytes(self) -> bytes | None:
        try:
            return self.hub_ca_file.read_bytes()
        except FileNotFoundError:
            return None

    def hub_ca_path(self) -> Path | None:
        """The CA bundle the hub's signed document last gave (it replaces [uplink] ca for an https hub), or None."""
        return self.hub_ca_file if self.hub_ca_file.exists() else None

    def _keep_trust(self, trust: object) -> bytes | None:
        """Keep the hub's next key a verified document announces (forget it when none is); its CA bundle, for the applier."""
        try:
            announced, ca = hubtrust.parse_trust(trust)
        except hubtrust.TrustError as exc:
            raise DesiredError(str(exc)) from None
        _replace(self.next_hub_key_path, announced, "the hub's next signing key")
        return ca

    def keep_ca(self, ca: bytes | None) -> None:
        """Trust ``ca`` for the hub's certificate from the next pipeline start on (None: [uplink] ca again)."""
        _replace(self.hub_ca_file, ca, "the hub's CA bundle")

    # -- verification -----------------------------------------------------------------------

    def verify(self, signed: object, etag: str, hub_key: Ed25519PublicKey, *, floor_ms: int | None = None) -> DesiredChange:
        """The desired document inside ``signed`` after checking the hub's signature, that it is ours, under ``etag``, and not
        older than the document in force (or than ``floor_ms``: one on its way in, a reload already asked for).

        Raises DesiredIgnored for what is not the hub's answer for this gateway now, DesiredError for a document of the hub's
        that cannot be applied."""
        if not isinstance(signed, Mapping) or not isinstance(signed.get("document"), Mapping):
            raise DesiredIgnored("unsigned", "the hub's answer has no signed 'document' object")
        if signed.get("alg") != "Ed25519":
            raise DesiredIgnored("unsigned", f"desired document alg = {signed.get('alg')!r}: expected 'Ed25519'")
        try:
            signer = hubtrust.signing_key(signed, pinned=hub_key, announced=self.announced_hub_key())
        except hubtrust.TrustError as exc:
            raise DesiredIgnored("unsigned", f"{exc}; if the hub's key was replaced without `ocn-edge hub key rotate`, delete "
                                 f"{self.hub_key_path} to pin the hub's key again") from None
        try:
            sig = str(signed["signature"])
            signer.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), canonical_json(signed["document"]))
        except (KeyError, ValueError, InvalidSignature):
            raise DesiredIgnored("unsigned", "the desired document's signature does not verify with the pinned hub key") from None
        document = signed["document"]
        if key_id(signer) != key_id(hub_key):  # the hub has switched to the key it announced (or vouched for): pinned from now on
            self.pin_hub_key(hubtrust.pem(signer))
        if document.get("device_id") != self.device_id:
            raise DesiredIgnored("device", f"the desired document is for device {document.get('device_id')!r}, not {self.device_id!r}")
        issued = document.get(ISSUED)
        if issued is not None and not _is_time(issued):
            raise DesiredError(f"desired {ISSUED} = {issued!r}: expected milliseconds since the epoch (a whole number from 0)")
        cleared = document.get(CLEARED) is True
        if cleared != (etag == ""):
            raise DesiredIgnored("etag", "a signed clear travels with the ETag \"\", not another"
                                 if cleared else "a document of the hub's sent with the ETag \"\", which only a signed clear has")
        if not cleared and "etag" in document and document["etag"] != etag:
            raise DesiredIgnored("etag", f"the desired document names ETag {str(document['etag'])[:40]!r}, not the {etag!r} it came with")
        self.check_fresh(issued, "a clear" if cleared else "it", etag=etag, floor_ms=floor_ms)
        if cleared:
            return DesiredChange(etag="", policy=None, config=None, issued_ms=issued)
        ca = self._keep_trust(document.get("trust"))
        policy, config = document.get("policy"), document.get("config")
        for name, part in (("policy", policy), ("config", config)):
            if part is not None and not isinstance(part, Mapping):
                raise DesiredError(f"desired {name}: expected a table, got {type(part).__name__}")
        software = None
        if document.get("software") is not None:
            try:
                software = parse_target(document["software"])
            except TargetError as exc:
                raise DesiredError(str(exc)) from None
        return DesiredChange(etag=etag, policy=policy, config=config, software=software, ca=ca, issued_ms=issued)

    def check_fresh(self, issued_ms: int | None, what: str, *, etag: str | None = None, floor_ms: int | None = None) -> None:
        """Raise DesiredIgnored unless a document (or clear) issued at ``issued_ms`` may replace the one in force: once that one
        says when the hub signed it, an older one, or one that does not say, is one the hub signed before (OXP §8.4).
        ``floor_ms``: the date of a document on its way in (a reload asked for), which must not be overtaken by an older one."""
        dates = [d for d in (self.applied_issued_ms, floor_ms) if d is not None]
        if not dates:
            return  # no signed issue time in force yet: a hub from before them, or nothing applied from a hub that has them
        newest = max(dates)
        if issued_ms is None:
            raise DesiredIgnored("undated", f"{what} carries no issue time, and the document in force (issued {newest}) does: "
                                 "a document signed before the hub dated them, played again")
        if issued_ms < newest or (issued_ms == newest and etag != self.applied_etag):
            raise DesiredIgnored("stale", f"{what} was issued at {issued_ms}, not after the document in force ({newest}): an older "
                                 "document played again, or one signed by a hub whose clock is behind (applied once the hub signs it later)")

    def adopt_date(self, etag: str, issued_ms: int) -> None:
        """The document in force (``etag``), undated until now, signed again by a hub that dates them: keep its date, so from now
        on older documents are ignored as for one applied dated (a gateway that ran it before the hub was upgraded)."""
        if etag != self.applied_etag or self.applied_issued_ms is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.dir / "applied.json", canonical_json({"etag": etag, ISSUED: issued_ms}))
        self.applied_issued_ms = issued_ms
        log.info("desired state in force now dated by the hub", extra={"etag": etag or "(local config)", "issued_ms": issued_ms})

    def record_ignored(self, etag: str, reason: str) -> None:
        """Report what was ignored for IGNORED_S (not refused: nothing sticks to the ETag, and a refusal's report stays);
        the caller says it once."""
        self._ignored = (time.monotonic(), f"desired {etag or 'clear'} ignored: {reason}"[:500])

    @property
    def ignored(self) -> str:
        """The report of the last offer ignored within IGNORED_S ("" if none), for the status report's errors."""
        if self._ignored is None or time.monotonic() - self._ignored[0] > IGNORED_S:
            return ""
        return self._ignored[1]

    def errors(self) -> list[str]:
        """What the status report says of desired state: the refusal in force, and the last offer ignored lately."""
        return [e for e in (self.last_error, self.ignored) if e]


class DesiredApplier:
    """Turns the hub's desired documents into a policy swap or a pipeline reload for one running gateway.

    Documents are applied one at a time and only the newest waiting one is applied, so
    two documents arriving close together can never land in the wrong order.
    """

    def __init__(
        self,
        gateway: RunningPipeline,
        *,
        state: DesiredState,
        base_config: GatewayConfig,
        request_reload: Callable[[Reload], None] | None,
        hub: HubKeySource,
        on_software: Callable[[SoftwareTarget | None], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self._on_software = on_software  # the updater (edge.update.updater), told of each target applied
        self.hub = hub
        self.state = state
        self.base_config = base_config
        self._request_reload = request_reload
        self._latest: tuple[object, str] | None = None
        self._ignored_said: tuple[str, str] | None = None  # (ETag, kind) of the last offer ignored: said once
        self._task: asyncio.Task[None] | None = None
        self._reload_requested: str | None = None  # the ETag whose reload the supervisor is about to do
        self._reload_issued: int | None = None  # and its date: nothing older is applied meanwhile
        # The CA bundle the running transport was built with: another one from the hub restarts the pipeline to use it.
        self._ca_in_use = state.hub_ca_bytes() if base_config.uplink.hub.startswith("https://") else None

    def on_desired(self, signed: object, etag: str) -> None:
        """The uplink's callback for each new offer in the hub's answers ("" = the hub holds no document); the same ETag
        signed again comes too (OXP §8.4: a later issue time)."""
        if self.gateway.stopped:
            return
        if etag and etag == self.state.applied_etag and self.state.applied_issued_ms is None and _dated(signed):
            pass  # the document in force, now dated by the hub: verified and its date kept (DesiredState.adopt_date)
        elif etag and etag in (self.state.applied_etag, self.state.refused_etag, self._reload_requested):
            return
        if not etag and (not self.state.applied_etag or self.state.clear_refused_for == self.state.applied_etag):
            return  # nothing desired, nothing applied: already on the local config (or a clear was refused while this runs)
        self._latest = (signed, etag)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._apply_newest(), name="desired")
            self.gateway.keep_until_stop(self._task)

    async def _apply_newest(self) -> None:
        while self._latest is not None:
            signed, etag = self._latest
            self._latest = None
            try:
                await self._apply(signed, etag)
            except _TryLater as exc:  # not refused: the hub offers the document again with its next answer
                log.info("desired state not applied yet; tried again with the hub's next answer", extra={"etag": etag, "reason": str(exc)})
            except DesiredIgnored as exc:  # not refused either: the hub's own document under this ETag is applied when it comes
                if (etag, exc.kind) != self._ignored_said:
                    log.warning("desired state ignored; the one in force stays", extra={"etag": etag or "(clear)", "reason": str(exc)})
                self._ignored_said = (etag, exc.kind)
                self.state.record_ignored(etag, str(exc))
            except DesiredError as exc:
                self.state.record_failure(etag, str(exc))
            except Exception as exc:  # noqa: BLE001 - whatever it was, the last good state stays and it is reported
                self.state.record_failure(etag, f"{type(exc).__name__}: {exc}")

    async def _apply(self, signed: object, etag: str) -> None:
        if etag and etag == self.state.applied_etag:
            # The document in force, dated by an upgraded hub: its date kept, nothing applied again. Whatever is wrong with
            # the copy, the document stays in force as it is, and nothing is reported against it.
            try:
                change = self.state.verify(signed, etag, await self._hub_key())
            except (DesiredError, DesiredIgnored) as exc:
                log.debug("the dated copy of the desired state in force does not verify", extra={"etag": etag, "reason": str(exc)})
                return
            if change.issued_ms is not None:
                self.state.adopt_date(change.etag, change.issued_ms)
            return
        if etag or signed is not None:
            change = self.state.verify(signed, etag, await self._hub_key(), floor_ms=self._reload_issued)
        else:
            # An unsigned clear (a hub from before signed clears): back to the local config, unless the document in force
            # is dated, from a hub that signs its clears too.
            if self.state.applied_issued_ms is not None or self._reload_issued is not None:
                raise DesiredIgnored("unsigned clear", "an unsigned clear, where the document in force is dated by a hub that signs "
                                     "its clears: not the hub's answer")
            change = DesiredChange(etag="", policy=None, config=None)
        gw = self.gateway
        config = self._target_config(change)
        policy, policy_toml = self._target_policy(change, config)
        ca_changed = False
        if self.base_config.uplink.hub.startswith("https://") and change.etag:
            if change.ca is not None and change.ca != self.state.hub_ca_bytes():
                await self._check_ca(change.ca)
            self.state.keep_ca(change.ca)
            ca_changed = self.state.hub_ca_bytes() != self._ca_in_use
        in_place = not ca_changed and only_log_levels_differ(gw.config, config)  # a log level is no reason to restart
        if not in_place and (config.digest != gw.config.digest or ca_changed):
            if self._request_reload is None:
                raise DesiredError("this gateway cannot restart its pipeline in place")
            keep = policy if policy is not None else (gw.policy if config.privacy == gw.config.privacy and not self.state.saved_policy_path() else None)
            self._reload_requested = etag
            self._reload_issued = change.issued_ms
            self._request_reload(Reload(config, keep, change, policy_toml))
            return
        if policy is None:
            policy = self._local_policy(config)
        if policy.digest != gw.policy.digest:
            gw.swap_policy(policy)
        if in_place:  # once the document's policy stands: a refused document changes nothing
            gw.take_log_levels(config)
        self.state.record_success(change, policy_toml=policy_toml)
        self._ignored_said = None
        if self._on_software is not None:
            self._on_software(change.software)

    async def _check_ca(self, ca: bytes) -> None:
        """A CA bundle is taken only if it verifies the certificate the hub presents now: one that did not would cut this
        gateway off from its hub for good (docs/updates.md, "The CA gateways trust")."""
        url = urlsplit(self.base_config.uplink.hub)
        host, port = url.hostname or "", url.port or 443
        try:
            context = ssl.create_default_context(cadata=ca.decode())
        except (ssl.SSLError, ValueError) as exc:
            raise DesiredError(f"desired trust.ca: not a CA bundle this gateway can load ({ca_bundle_problem(exc)})") from None
        try:
            async with asyncio.timeout(self.base_config.uplink.timeout):
                _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
        except ssl.SSLCertVerificationError as exc:
            raise DesiredError(f"desired trust.ca does not verify the hub's certificate at {host}:{port} ({exc.verify_message}); "
                               "the CA bundle in use is kept") from None
        except (OSError, TimeoutError) as exc:
            raise _TryLater(f"cannot check the hub's CA bundle against {host}:{port} now ({os_words(exc)})") from None

    def _target_config(self, change: DesiredChange) -> GatewayConfig:
        if change.config is None:
            return self.base_config
        try:
            # The hub ran the same check before storing the document; a hub of another version may not have.
            check_desired_config(change.config)
        except DesiredCheckError as exc:
            raise DesiredError(str(exc)) from None
        merged = overlay_config(effective_toml(self.base_config), change.config)
        try:
            return parse_config(dumps_toml(merged), path=self.base_config.path)
        except ConfigError as exc:
            raise DesiredError("desired config: " + "; ".join(exc.problems)) from None

    def _target_policy(self, change: DesiredChange, config: GatewayConfig) -> tuple[Policy | None, str | None]:
        if change.policy is None:
            return None, None
        if config.privacy.require_signed:
            raise DesiredError(
                "privacy.require_signed = true: a policy must arrive as a file signed by the governance key, "
                "so the hub's policy was not applied"
            )
        try:
            policy, text = check_desired_policy(change.policy)
        except DesiredCheckError as exc:
            raise DesiredError(str(exc)) from None
        try:
            if config.digest == self.gateway.config.digest or only_log_levels_differ(self.gateway.config, config):
                # Same devices: check the policy against their channels before anything changes.
                self.gateway.check_policy(policy)
        except PolicyError as exc:
            raise DesiredError("desired policy: " + "; ".join(exc.problems)) from None
        return policy, text

    def _local_policy(self, config: GatewayConfig) -> Policy:
        try:
            policy = local_policy(config)
            self.gateway.check_policy(policy)
        except PolicyError as exc:
            raise DesiredError("the local policy: " + "; ".join(exc.problems)) from None
        return policy

    async def _hub_key(self) -> Ed25519PublicKey:
        key = self.state.hub_key()
        if key is not None:
            return key
        try:
            pem = await self.hub.fetch_hub_key()
        except TransportError as exc:  # not this document's fault: nothing is held against its ETag
            raise DesiredIgnored("hub key", str(exc)) from None
        return self.state.pin_hub_key(pem)

    def forget_reload(self, etag: str) -> None:
        """The supervisor did not do the reload asked for ``etag`` (older than what came in force meanwhile): the ETag may be
        offered again, dated later, and is then applied."""
        if self._reload_requested == etag:
            self._reload_requested = self._reload_issued = None


def last_applied(config: GatewayConfig, desired: DesiredState) -> tuple[GatewayConfig, Policy | None]:
    """The config and policy to start with: the hub's last applied ones when they still validate (None: the local policy)."""
    overlay = desired.saved_config_overlay()
    if overlay is not None:
        try:
            config = parse_config(dumps_toml(overlay_config(effective_toml(config), overlay)), path=config.path)
        except ConfigError as exc:
            desired.record_failure(
                desired.applied_etag, "the saved desired config no longer validates: " + "; ".join(exc.problems)
            )
    policy = None
    saved = desired.saved_policy_path()
    if saved is not None and not config.privacy.require_signed:
        try:
            policy = parse_policy(saved.read_text(), path=str(saved))
        except PolicyError as exc:
            desired.record_failure(desired.applied_etag, f"the saved desired policy {saved} no longer validates: {exc}")
    return config, policy


def _is_time(value: object) -> bool:
    return type(value) is int and value >= 0


def _dated(signed: object) -> bool:
    """Whether an offer carries a document with an issue time (verified only when applied)."""
    document = signed.get("document") if isinstance(signed, Mapping) else None
    return isinstance(document, Mapping) and _is_time(document.get(ISSUED))


def is_older(change: DesiredChange, state: DesiredState) -> bool:
    """Whether ``change`` is dated before the document in force (or undated after a dated one): a reload queued behind a newer one."""
    if state.applied_issued_ms is None:
        return False
    if change.issued_ms is None or change.issued_ms < state.applied_issued_ms:
        return True
    return change.issued_ms == state.applied_issued_ms and change.etag != state.applied_etag  # as check_fresh has it
