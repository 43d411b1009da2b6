"""Enrols this gateway at a hub: creates the device key if missing and registers its public half with a token.

`first_boot` is the unattended form a seeded card uses (`ocn-edge enrol --first-boot`): it reads the
token cloud-init wrote to /etc/ocn-edge/enrol-token, retries while the network is not up, records the
outcome in <state_dir>/enrolment.json (the local page shows it) and deletes the token once used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import __version__
from edge.private import private_directory
from edge.protocol import PRIVATE_KEY_FILE, KeyFileError, key_id, load_private_key, raw_public_key, write_keypair
from edge.transport import tls_context
from edge.util.backoff import Backoff
from edge.util.clock import now_ms
from edge.util.files import file_words

# The broker password the hub hands out at enrolment (OXP §9), kept beside the device key: [uplink] broker_password's default.
BROKER_PASSWORD_FILE = "broker.password"

__all__ = [
    "ENROLMENT_RECORD",
    "TOKEN_FILE",
    "Enrolment",
    "EnrolError",
    "FirstBoot",
    "HubUnreachable",
    "enrol",
    "ensure_device_key",
    "first_boot",
    "read_enrolment_record",
]

TOKEN_FILE = "enrol-token"  # beside gateway.toml: /etc/ocn-edge/enrol-token on a seeded card
ENROLMENT_RECORD = "enrolment.json"  # in the state dir: what the last enrolment attempt came to


class EnrolError(Exception):
    """Enrolment did not happen; the message says why and what to do."""


class HubUnreachable(EnrolError):
    """The hub could not be reached, or was too busy or broken to answer: worth trying again later."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    """The hub's answer: the key id it registered and whether the device is active or awaits approval."""

    device_id: str
    key_id: str
    status: str
    key_path: Path
    key_created: bool


def ensure_device_key(key_path: Path) -> tuple[Path, bool]:
    """Make sure the device key exists at ``key_path`` (created mode 0600 if missing); True if it was created."""
    if key_path.exists():
        try:
            load_private_key(key_path)
        except KeyFileError as exc:
            raise EnrolError(str(exc)) from None
        return key_path, False
    if key_path.name != PRIVATE_KEY_FILE:
        raise EnrolError(
            f"uplink key = {str(key_path)!r}: no such file. Create it with `ocn-edge keygen --out DIR`, "
            f"or leave uplink.key unset so enrolment creates <state_dir>/{PRIVATE_KEY_FILE}"
        )
    try:
        private_path, _ = write_keypair(private_directory(key_path.parent))
    except (OSError, FileExistsError) as exc:
        raise EnrolError(f"{key_path.parent}: cannot create the device key there ({file_words(exc)})") from None
    return private_path, True


async def enrol(
    *,
    hub_url: str,
    token: str,
    device_id: str,
    key_path: Path,
    ca: Path | None = None,
    timeout_s: float = 30.0,
) -> Enrolment:
    """Register the device key at ``hub_url`` with an enrolment token from city IT."""
    if not hub_url:
        raise EnrolError("uplink hub is empty (store only): set [uplink] hub to the hub's URL to enrol")
    if not token.strip():
        raise EnrolError("the enrolment token is empty: paste the token city IT gave you")
    key_path, created = ensure_device_key(key_path)
    key = load_private_key(key_path)
    body = {
        "token": token.strip(),
        "device_id": device_id,
        "public_key": base64.urlsafe_b64encode(raw_public_key(key)).rstrip(b"=").decode("ascii"),
        "software_version": __version__,
    }
    url = hub_url.rstrip("/") + "/oxp/v1/enrol"
    ssl_context = tls_context(ca) if url.startswith("https://") else False
    import aiohttp  # here, not at the top: `ocn-edge run` imports this module, and its start-up does not wait for aiohttp

    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            trust_env=True,
        ) as session:
            async with session.post(url, json=body) as resp:
                status, text = resp.status, await resp.text(errors="replace")
    except aiohttp.ClientConnectorCertificateError as exc:
        from edge.util.linkwords import certificate_words

        raise EnrolError(  # a wrong CA does not heal by waiting
            f"the hub at {hub_url} presented a certificate that [uplink] ca does not trust ({certificate_words(exc.certificate_error)})"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        from edge.util.linkwords import link_problem

        reason = "no answer in time" if isinstance(exc, TimeoutError) else link_problem(exc)
        raise HubUnreachable(f"cannot reach the hub at {hub_url} ({reason}): check [uplink] hub and the network") from None
    answer = _json(text)
    from edge.util.linkwords import printable

    detail = printable(str(answer.get("detail", ""))) if answer else printable(text)
    if status == 401:
        raise EnrolError(f"the hub refused the enrolment token ({detail}): ask city IT for a new token")
    if status == 409:
        raise EnrolError(
            f"device id {device_id!r} is already enrolled at the hub with another key ({detail}). "
            f"Use that device's original key file, or ask city IT to revoke the old key first"
        )
    if status in (429, 503) or status >= 500:
        raise HubUnreachable(f"the hub answered {status} to the enrolment: {detail or 'no explanation'}")
    if 200 <= status < 300 and not (status == 201 and answer is not None):
        said = f"with {detail!r}" if detail else ("with a JSON document that is not an enrolment's answer" if answer else "with nothing")
        raise EnrolError(f"what answers at {hub_url} is not an OCN hub: it answered {status} to the enrolment {said}; check [uplink] hub")
    if status != 201 or answer is None:
        raise EnrolError(f"the hub answered {status} to the enrolment: {detail or 'no explanation'}")
    expected = key_id(key).hex()
    if answer.get("key_id") != expected or answer.get("status") not in ("active", "pending"):
        raise EnrolError(f"the hub's answer does not confirm key id {expected}: {printable(text)}")
    if isinstance(answer.get("broker_password"), str):
        _keep_broker_password(key_path.parent / BROKER_PASSWORD_FILE, answer["broker_password"])
    return Enrolment(device_id, expected, str(answer["status"]), key_path, created)


def _keep_broker_password(path: Path, password: str) -> None:
    """Write the broker password the hub gave (OXP §9) beside the device key, readable by this user only."""
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise EnrolError(f"{path}: cannot write the broker password there ({exc.strerror or exc})") from None


@dataclass(frozen=True, slots=True)
class FirstBoot:
    """What `first_boot` did: ``enrolled`` now, ``already`` enrolled before, or ``no-token`` to present."""

    outcome: str
    enrolment: Enrolment | None = None


async def first_boot(
    *,
    hub_url: str,
    token_file: Path,
    device_id: str,
    key_path: Path,
    state_dir: Path,
    ca: Path | None = None,
    timeout_s: float = 30.0,
    retry_for_s: float = 900.0,
    backoff_max_s: float = 60.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_retry: Callable[[HubUnreachable, float], None] = lambda _exc, _delay: None,
) -> FirstBoot:
    """Enrol with the seeded token in ``token_file``, once: a second call for the same hub is a no-op.

    While the hub cannot be reached it retries, doubling the wait up to ``backoff_max_s``, for at most
    ``retry_for_s`` seconds (then `HubUnreachable`; the token stays for the next boot). A refusal
    (401 bad token, 409 conflict) is recorded in ``state_dir``/enrolment.json and raised at once:
    waiting would not change the hub's mind. On success the record is written, then the token deleted.
    """
    record = read_enrolment_record(state_dir)
    if record.get("status") in ("active", "pending") and record.get("hub") == hub_url and key_path.exists():
        # Enrolled before (perhaps stopped before the token was deleted): finish that, and stop.
        _delete_token(token_file)
        return FirstBoot("already")
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return FirstBoot("no-token")
    except OSError as exc:
        raise _refused(state_dir, hub_url, f"{token_file}: cannot read the enrolment token ({file_words(exc)})") from None
    except UnicodeDecodeError as exc:
        raise _refused(state_dir, hub_url, f"{token_file}: cannot read the enrolment token (not UTF-8 text at byte {exc.start})") from None
    if not token:
        raise _refused(state_dir, hub_url, f"{token_file} is empty: seed the card again with the token from city IT")
    deadline = time.monotonic() + retry_for_s
    backoff = Backoff(1.0, backoff_max_s, jitter=0)
    while True:
        try:
            result = await enrol(hub_url=hub_url, token=token, device_id=device_id, key_path=key_path, ca=ca, timeout_s=timeout_s)
        except HubUnreachable as exc:
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise
            on_retry(exc, delay)
            await sleep(delay)
            continue
        except EnrolError as exc:
            raise _refused(state_dir, hub_url, str(exc)) from None
        _write_record(state_dir, {"status": result.status, "key_id": result.key_id, "hub": hub_url, "at_ms": now_ms()})
        _delete_token(token_file)
        return FirstBoot("enrolled", result)


def read_enrolment_record(state_dir: Path) -> dict[str, object]:
    """The last first-boot outcome (``status`` active, pending or refused, ``detail``, ``hub``, ``at_ms``), or {}."""
    try:
        document = json.loads((state_dir / ENROLMENT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _refused(state_dir: Path, hub_url: str, detail: str) -> EnrolError:
    _write_record(state_dir, {"status": "refused", "detail": detail, "hub": hub_url, "at_ms": now_ms()})
    return EnrolError(detail)


def _write_record(state_dir: Path, record: dict[str, object]) -> None:
    """Whole or not at all, so the local page never reads half a record."""
    private_directory(state_dir)
    path = state_dir / ENROLMENT_RECORD
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _delete_token(token_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        token_file.unlink()


def _json(text: str) -> dict[str, Any] | None:
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
