"""The running gateway's updater: the hub's software target (desired state, OXP §8.4) fetched within the daily byte budget, then asked for.

The hub's signed desired document may name a release (``"software": {"version", "url", "key_id"}``,
docs/updates.md "From the hub: staged rollout"). The applier (edge.desired) keeps the target in
``<state>/desired/software.json`` and hands it here, at start and whenever it changes. The updater
then does what ``ocn-edge release fetch`` does by hand (edge.update.fetch), on a thread, with what
is left of the uplink's daily byte budget as its cap: a download cut short by the budget or the
link resumes at the next try (every ``retry_s``), a refusal is final for that version, and the
installer's request is written once the bundle is whole. What happened shows as ``software_update``
in /status and the status report (edge.update.report), the files fetch and the installer write.

Nothing is fetched for the version already running, for a version this device rolled back (the
installer remembers them), or for a version whose install is already requested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import __version__
from edge.protocol.keys import KeyFileError, load_public_key
from edge.update.fetch import FETCHED_FILE, INSTALLED_FILE, REQUEST_FILE, Fetched, FetchError, fetch_release, record_outcome, served_chain, update_dir
from edge.update.manifest import Refused, parse_version
from edge.update.rollover import ROLLOVER_FILE, load_chain, trust_from
from edge.util.files import file_problem, file_words

__all__ = ["SoftwareTarget", "TargetError", "Updater", "opt_path", "parse_target", "release_key_path"]

log = logging.getLogger("ocn.update")

RETRY_S = 600.0  # after a download cut short (link, budget), the next try
# Where the installer's defaults are (edge/update/install.py); the environment may say otherwise (a test's temporary root).
RELEASE_KEY_ENV, OPT_ENV = "OCN_EDGE_RELEASE_KEY", "OCN_EDGE_OPT"
# One download at a time in a process: a pipeline restarted in place (a desired config change) starts a new
# updater while the old one's thread may still be downloading into the same files.
_FETCHING = threading.Lock()


def release_key_path() -> Path:
    """The release public key the running gateway checks targets with: /etc/ocn-edge/release.pub unless $OCN_EDGE_RELEASE_KEY."""
    return Path(os.environ.get(RELEASE_KEY_ENV) or "/etc/ocn-edge/release.pub")


def opt_path() -> Path:
    """The A/B slots whose bundles the gateway reuses: /opt/ocn-edge unless $OCN_EDGE_OPT."""
    return Path(os.environ.get(OPT_ENV) or "/opt/ocn-edge")


class TargetError(ValueError):
    """A software target in a desired document that cannot be acted on; the message names the field and value."""


@dataclass(frozen=True, slots=True)
class SoftwareTarget:
    """The release the hub wants this device to run: its version, where its bundle is, and the release key id that signs it."""

    version: str
    url: str  # absolute, or a path on the hub ("/releases/2.0.0"), resolved against the gateway's hub URL
    key_id: str  # hex of the release key id
    pause_backlog: int = 0  # batches waiting in the spool above which the download is held back (0: never)

    def as_json(self) -> dict[str, object]:
        found: dict[str, object] = {"version": self.version, "url": self.url, "key_id": self.key_id}
        if self.pause_backlog:
            found["pause_backlog"] = self.pause_backlog
        return found


def parse_target(raw: object) -> SoftwareTarget:
    """The ``software`` object of a desired document; TargetError naming the field when it is not one."""
    if not isinstance(raw, Mapping):
        raise TargetError(f"desired software: expected an object with version, url and key_id, got {type(raw).__name__}")
    fields: dict[str, str] = {}
    for name in ("version", "url", "key_id"):
        value = raw.get(name)
        if not isinstance(value, str) or not value or len(value) > 2000:
            raise TargetError(f"desired software.{name} = {value!r}: expected a non-empty string")
        fields[name] = value
    try:
        parse_version(fields["version"])
    except Refused as exc:
        raise TargetError(f"desired software.version = {fields['version']!r}: {exc}") from None
    try:
        bytes.fromhex(fields["key_id"])
    except ValueError:
        raise TargetError(f"desired software.key_id = {fields['key_id']!r}: expected hex") from None
    pause = raw.get("pause_backlog", 0)
    if type(pause) is not int or pause < 0:
        raise TargetError(f"desired software.pause_backlog = {pause!r}: expected a whole number of batches")
    scheme = urllib.parse.urlsplit(fields["url"]).scheme
    if scheme not in ("", "http", "https") or (not scheme and not fields["url"].startswith("/")):
        raise TargetError(f"desired software.url = {fields['url']!r}: expected an https URL or a path on the hub")
    return SoftwareTarget(**fields, pause_backlog=pause)


class Updater:
    """Pursues one software target at a time for a running gateway (see the module's docstring)."""

    def __init__(
        self,
        *,
        state_dir: Path,
        hub_url: str,
        release_key: Path,
        opt: Path,
        allowance: Callable[[], int | None] = lambda: None,
        spend: Callable[[int], None] = lambda size: None,
        backlog: Callable[[], int] = lambda: 0,
        running: str = __version__,
        retry_s: float = RETRY_S,
        ca: Callable[[], str | Path | None] = lambda: None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.hub_url = hub_url
        self.release_key = release_key
        self.opt = opt
        self._allowance = allowance  # bytes left today (None: no budget), the uplink's
        self._spend = spend
        self._backlog = backlog  # batches waiting in the spool
        self._held_back = ""  # the version whose download waits for the backlog (logged once)
        self.running = running
        self.retry_s = retry_s
        self._ca = ca  # the CA bundle an https hub's certificate chains to (the uplink's, read at each try: it may rotate)
        self._target: SoftwareTarget | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._settled: set[str] = set()  # versions refused or requested: not tried again by this process

    def bind_budget(self, allowance: Callable[[], int | None], spend: Callable[[int], None], backlog: Callable[[], int]) -> None:
        """Take the uplink's daily byte budget (what is left today, where the download's bytes are charged) and the spool's backlog."""
        self._allowance, self._spend, self._backlog = allowance, spend, backlog

    def want(self, target: SoftwareTarget | None) -> None:
        """The hub's target changed (or was read at start): pursue it, dropping the one before."""
        if target == self._target:
            return
        self._target = target
        self._wake.set()

    def start(self) -> asyncio.Task[None]:
        """The updater's task; cancel it to stop (a download in its thread finishes its current piece, kept for the next try)."""
        self._task = asyncio.create_task(self._run(), name="updater")
        return self._task

    async def _run(self) -> None:
        while True:
            target = self._target
            self._wake.clear()
            try:
                wait = None if target is None else await self.try_once(target)
            except Exception as exc:  # an update must never stop the gateway's pipeline: logged, tried again later
                log.error("software update failed; trying again later", extra={"error": f"{type(exc).__name__}: {exc}", "retry_s": self.retry_s})
                wait = self.retry_s
            if wait is None:
                await self._wake.wait()
            else:
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def try_once(self, target: SoftwareTarget) -> float | None:
        """One try at ``target``: None when nothing more is to be done for it, else the seconds until the next try."""
        if target.version == self.running or target.version in self._settled:
            return None
        work = update_dir(self.state_dir)
        if _asked(work, target.version) or target.version in _rolled_back(work):
            self._settled.add(target.version)
            return None
        try:
            key = load_public_key(self.release_key)
        except (KeyFileError, OSError) as exc:
            said = file_words(exc) if isinstance(exc, OSError) else str(exc)
            self._refuse(work, target, "wrong_key", f"the release key {self.release_key} cannot be read: {said}")
            return None
        url = urllib.parse.urljoin(self.hub_url.rstrip("/") + "/", target.url)
        try:
            known = await asyncio.to_thread(_known_keys, key, work, url, target.key_id.lower(), self._ca())
        except Refused as exc:
            self._refuse(work, target, exc.reason, str(exc))
            return None
        except FetchError as exc:
            log.info("software update: the release's rollover chain cannot be read now; trying again later", extra={"detail": str(exc)})
            return self.retry_s
        if target.key_id.lower() not in known:
            self._refuse(work, target, "wrong_key", f"release {target.version} is signed by key id {target.key_id}, "
                                                    f"not by a release key this gateway trusts (key ids {', '.join(sorted(known))})")
            return None
        waiting = self._backlog()
        if target.pause_backlog and waiting > target.pause_backlog:
            if self._held_back != target.version:  # the readings' batches go first, as the rollout asked
                self._held_back = target.version
                log.info("software update held back while the spool backlog is high",
                         extra={"version": target.version, "batches_waiting": waiting, "pause_backlog": target.pause_backlog})
            return self.retry_s
        left = self._allowance()
        if left is not None and left <= 0:
            return self.retry_s  # today's budget is spent: tomorrow, or when the uplink frees some
        log.info("software update: fetching the hub's target", extra={"version": target.version, "url": url})
        try:
            fetched = await asyncio.to_thread(_fetch_unless_asked, url, key, self.state_dir, self.opt, left or 0, target.version, self._ca())
        except Refused as exc:
            if exc.reason == "no_space":  # the disk may have room again later: tried again then, logged once
                if self._held_back != f"no_space {target.version}":
                    self._held_back = f"no_space {target.version}"
                    log.warning("software update refused: no room on the disk; the running version is untouched, tried again later",
                                extra={"version": target.version, "detail": str(exc), "retry_s": self.retry_s})
                return self.retry_s
            self._settled.add(target.version)  # fetch wrote the refusal for the status report
            log.warning("software update refused", extra={"version": target.version, "reason": exc.reason, "detail": str(exc)})
            return None
        except FetchError as exc:
            self._spend(exc.downloaded)
            log.info("software update download paused; it resumes at the next try",
                     extra={"version": target.version, "detail": str(exc), "retry_s": self.retry_s})
            return self.retry_s
        except OSError as exc:
            log.warning("software update cannot write its state directory", extra={"version": target.version, "error": file_problem(exc)})
            return self.retry_s
        self._settled.add(target.version)
        if fetched is None:
            return None  # another run of this process asked for it meanwhile
        self._spend(fetched.downloaded)
        log.info("software update downloaded; installation requested",
                 extra={"version": target.version, "bytes": fetched.downloaded, "requests": fetched.requests, "reused": fetched.reused})
        return None

    def _refuse(self, work: Path, target: SoftwareTarget, reason: str, detail: str) -> None:
        self._settled.add(target.version)
        log.warning("software update refused", extra={"version": target.version, "reason": reason, "detail": detail})
        record_outcome(work, {"state": "refused", "version": target.version, "reason": reason, "detail": detail})


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _asked(work: Path, version: str) -> bool:
    """Whether ``version``'s install was asked for already: the request waits for the installer, or the last download asked."""
    fetched = _read(work / FETCHED_FILE)
    return _read(work / REQUEST_FILE).get("version") == version or (fetched.get("state") == "requested" and fetched.get("version") == version)


def _fetch_unless_asked(
    url: str, key: Ed25519PublicKey, state: Path, opt: Path, max_bytes: int, version: str, ca: str | Path | None
) -> Fetched | None:
    with _FETCHING:
        if _asked(update_dir(state), version):
            return None
        return fetch_release(url, key, state=state, opt=opt, max_bytes=max_bytes, ca=ca)


def _known_keys(anchor: Ed25519PublicKey, work: Path, url: str, wanted: str, ca: str | Path | None) -> set[str]:
    """Ids (hex) of the release keys this gateway trusts now; when ``wanted`` is not among those its kept chain reaches, the
    chain the release's server offers is walked too (a rotation this gateway has not heard of: docs/updates.md)."""
    kept = load_chain(work / ROLLOVER_FILE)
    trust = trust_from(anchor, kept)
    if wanted not in {kid.hex() for kid in trust.keys}:
        trust = trust_from(anchor, kept, served_chain(url, ca=ca))
    now = time.time()
    return {kid.hex() for kid, (_, until) in trust.keys.items() if until is None or now < until}


def _rolled_back(work: Path) -> list[str]:
    versions = _read(work / INSTALLED_FILE).get("rolled_back_versions") or []
    return [str(v) for v in versions] if isinstance(versions, list) else []
