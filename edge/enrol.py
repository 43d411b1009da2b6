"""Enrols this gateway at a hub: creates the device key if missing and registers its public half with a token."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edge import __version__
from edge.protocol import PRIVATE_KEY_FILE, KeyFileError, key_id, load_private_key, raw_public_key, write_keypair
from edge.uplink import tls_context

__all__ = ["Enrolment", "EnrolError", "enrol", "ensure_device_key"]


class EnrolError(Exception):
    """Enrolment did not happen; the message says why and what to do."""


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
        private_path, _ = write_keypair(key_path.parent)
    except (OSError, FileExistsError) as exc:
        raise EnrolError(f"{key_path.parent}: cannot create the device key there ({exc})") from None
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
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            trust_env=True,
        ) as session:
            async with session.post(url, json=body) as resp:
                status, text = resp.status, await resp.text(errors="replace")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise EnrolError(
            f"the hub at {hub_url} presented a certificate that [uplink] ca does not trust ({exc.certificate_error})"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise EnrolError(f"cannot reach the hub at {hub_url} ({reason}): check [uplink] hub and the network") from None
    answer = _json(text)
    detail = str(answer.get("detail", "")) if answer else text[:200]
    if status == 401:
        raise EnrolError(f"the hub refused the enrolment token ({detail}): ask city IT for a new token")
    if status == 409:
        raise EnrolError(
            f"device id {device_id!r} is already enrolled at the hub with another key ({detail}). "
            f"Use that device's original key file, or ask city IT to revoke the old key first"
        )
    if status != 201 or answer is None:
        raise EnrolError(f"the hub answered {status} to the enrolment: {detail or 'no explanation'}")
    expected = key_id(key).hex()
    if answer.get("key_id") != expected or answer.get("status") not in ("active", "pending"):
        raise EnrolError(f"the hub's answer does not confirm key id {expected}: {text[:200]}")
    return Enrolment(device_id, expected, str(answer["status"]), key_path, created)


def _json(text: str) -> dict | None:  # type: ignore[type-arg]
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
