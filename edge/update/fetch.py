"""The gateway's part of an update: download a release into its state directory, only what it lacks, verify it, ask for its install.

The gateway is unprivileged and sandboxed: it never writes /opt. It fetches the signed manifest,
checks it (key, expiry, platform, version), then each file its target installs, by SHA-256:
a file already downloaded, or already installed in a slot (each slot keeps the bundle it was
built from in ``release/``), costs no link bytes. The rest is downloaded into
``update/blobs/<sha256>.part`` and resumed with an HTTP Range request after an interruption;
a whole file is checked against its digest before it is kept. The bundle is then assembled in
``update/releases/<version>/``, checked once more as a whole, and ``update/request.json`` is
written (write, fsync, rename): the path unit ocn-edge-update.path starts the installer on it.

State directory layout and write order: docs/updates.md, "On the gateway".
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import __version__
from edge.protocol.errors import ProtocolError
from edge.protocol.release import MAX_MANIFEST_BYTES, release_key_id
from edge.update.delta import DeltaError, apply_delta
from edge.update.manifest import MANIFEST_FILE, FileEntry, Manifest, Refused, check_files, check_for_device, file_digest, read_manifest, this_target
from edge.update.rollover import MAX_CHAIN_BYTES, ROLLOVER_FILE, Trust, extend_chain, key_for, load_chain, read_chain, trust_from

if TYPE_CHECKING:
    from http.client import HTTPResponse

__all__ = [
    "FETCHED_FILE",
    "FetchError",
    "Fetched",
    "INSTALLED_FILE",
    "KEEP_FREE",
    "REQUEST_FILE",
    "fetch_release",
    "record_outcome",
    "served_chain",
    "unwritten_outcome",
    "update_dir",
    "write_json",
]

INSTALLED_FILE = "installed.json"  # the installer's last outcome (written by root, read here and by the status report)
REQUEST_FILE = "request.json"  # the ask to the privileged installer (the path unit watches it)
FETCHED_FILE = "fetched.json"  # the last download's outcome, for the status report and the local page
_CHUNK = 64 * 1024
KEEP_FREE = 16 << 20  # bytes an update leaves free on the state directory's disk: the spool's room comes first
_TIMEOUT_S = 30.0


class FetchError(Exception):
    """The download stopped short (network, budget): what was fetched is kept and the next run resumes."""

    downloaded = 0  # body bytes over the link in the run it stopped (set by fetch_release), for the caller's budget
    status = 0  # the HTTP status the server answered with, when it answered


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one fetch did: the release, where its bundle is, and what it cost on the link."""

    version: str
    bundle: Path
    downloaded: int  # body bytes over the link in this run (the manifest included)
    requests: int  # HTTP requests made in this run (each costs a few hundred bytes of headers)
    reused: int  # files found already held (downloaded before, or in a slot)

    def summary(self) -> str:
        return (
            f"release {self.version} ready in {self.bundle}: {self.downloaded} bytes downloaded in {self.requests} requests, "
            f"{self.reused} files already held; installation requested"
        )


def update_dir(state: Path) -> Path:
    """``<state>/update``, where everything of an update on the gateway's side lives."""
    return state / "update"


def write_json(path: Path, value: object) -> None:
    """Write, fsync, rename, fsync the directory: after a power cut the file is the old or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as stream:
        json.dump(value, stream, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Link:
    """HTTP GETs against one base URL, counting the body bytes and requests and keeping to a byte allowance."""

    def __init__(self, base: str, max_bytes: int, ca: str | Path | None = None) -> None:
        self.base = base.rstrip("/") + "/"
        # An https hub with a certificate of the city's CA: trust that CA (and only it), as the uplink does with [uplink] ca.
        self._tls = ssl.create_default_context(cafile=str(ca)) if ca and self.base.startswith("https://") else None
        self.max_bytes = max_bytes
        self.bytes = 0
        self.requests = 0

    def _open(self, path: str, offset: int = 0) -> tuple[HTTPResponse | None, int]:
        # Loaded here, in the worker thread that downloads, not at the gateway's start (issue 17's start-up target).
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.base + path)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        self.requests += 1
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=self._tls)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the part is already whole: nothing more to send
                return None, offset
            error = FetchError(f"{self.base + path}: the server answered {exc.code} {exc.reason}")
            error.status = exc.code
            raise error from None
        except (urllib.error.URLError, OSError) as exc:
            from edge.util.linkwords import link_problem

            reason = getattr(exc, "reason", exc)  # a URLError's: an OSError, or a sentence
            reason = link_problem(reason, "the update server") if isinstance(reason, BaseException) else reason
            raise FetchError(f"{self.base + path}: cannot download ({reason}); what was fetched is kept for the next try") from None
        # 206: the server resumed where the part ends; 200: it sends the whole file again.
        return response, offset if response.status == 206 else 0

    def _allowance(self) -> int:
        return self.max_bytes - self.bytes if self.max_bytes else 1 << 62

    def small(self, path: str, limit: int) -> bytes:
        response, _ = self._open(path)
        if response is None:
            raise FetchError(f"{self.base + path}: the server sent nothing")
        with response:
            data = response.read(limit + 1)
        self.bytes += len(data)
        if len(data) > limit:
            raise Refused("malformed", f"{self.base + path}: over {limit} bytes, not a release manifest")
        return data

    def into(self, path: str, part: Path, size: int) -> None:
        """Download ``path`` into ``part``, resuming from its length; FetchError if cut short or over the allowance."""
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            return
        if self._allowance() <= 0:
            raise FetchError(f"the byte allowance of {self.max_bytes} is used up; the download resumes at {part.name} next time")
        response, start = self._open(path, have)
        if response is None:
            return
        import http.client  # loaded by _open

        dropped = False
        with response, part.open("r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            try:
                while start < size and self._allowance() > 0:
                    chunk = response.read(min(_CHUNK, size - start, self._allowance()))
                    if not chunk:
                        # The answer ended: early if the server announced more (the connection dropped), or
                        # because the file there is shorter than the manifest says (the caller refuses it).
                        dropped = bool(response.length)
                        break
                    out.write(chunk)
                    start += len(chunk)
                    self.bytes += len(chunk)
            except (http.client.HTTPException, OSError):
                dropped = True
            out.flush()
            os.fsync(out.fileno())
        if dropped:
            raise FetchError(f"{self.base + path}: the connection ended at {start} of {size} bytes; the next try resumes there")
        if start < size and self._allowance() <= 0:
            raise FetchError(f"the byte allowance of {self.max_bytes} is used up; the download resumes at {part.name} ({start} of {size} bytes) next time")


class _Holdings:
    """Files the device already has, by SHA-256: downloaded blobs, and each installed slot's copy of its bundle (indexed once, when first asked)."""

    def __init__(self, opt: Path, blobs: Path) -> None:
        self.opt, self.blobs = opt, blobs
        self._index: dict[bytes, Path] | None = None

    def find(self, sha256: bytes) -> Path | None:
        blob = self.blobs / sha256.hex()
        if blob.exists():
            return blob
        if self._index is None:
            self._index = {}
            for slot in ("a", "b"):
                for path in sorted((self.opt / slot / "release").glob("**/*")):
                    if path.is_file() and not path.is_symlink():
                        self._index.setdefault(file_digest(path)[1], path)
        return self._index.get(sha256)


def _keep(part: Path, entry: FileEntry, blob: Path, source: str) -> None:
    """A fetched file kept under its digest, or Refused (and removed) if it is not what the manifest says."""
    size, digest = file_digest(part)
    if size < entry.size:  # the server has nothing more to send: the file there is cut short
        part.unlink()
        raise Refused("truncated", f"{source}: the server has {size} of its {entry.size} bytes")
    if size != entry.size or digest != entry.sha256:
        part.unlink()
        raise Refused("tampered", f"{source}: SHA-256 {digest.hex()[:16]}… ({size} bytes), the manifest says {entry.sha256.hex()[:16]}…")
    os.replace(part, blob)


def _by_delta(manifest: Manifest, entry: FileEntry, part: Path, link: _Link, holdings: _Holdings) -> bool:
    """Rebuild ``entry`` into ``part`` from a file the device holds and a downloaded delta; False if no delta applies."""
    for way in manifest.deltas.get(entry.path, ()):
        base = holdings.find(way.base)
        if base is None:
            continue
        patch = holdings.blobs / way.patch.sha256.hex()
        if not patch.exists():
            patch_part = holdings.blobs / f"{way.patch.sha256.hex()}.part"
            link.into(way.patch.path, patch_part, way.patch.size)
            _keep(patch_part, way.patch, patch, f"{link.base}{way.patch.path}")
        try:
            rebuilt = apply_delta(base.read_bytes(), patch.read_bytes(), size=entry.size)
        except DeltaError:
            continue  # the file itself is downloaded instead, and checked as always
        finally:
            patch.unlink()
        part.write_bytes(rebuilt)
        return True
    return False


def fetch_release(
    url: str,
    release_key: Ed25519PublicKey,
    *,
    state: Path,
    opt: Path,
    max_bytes: int = 0,
    target: str | None = None,
    installed: str | None = __version__,
    now: float | None = None,
    ca: str | Path | None = None,
    keep_free: int = KEEP_FREE,
) -> Fetched:
    """Download the release at ``url`` (its manifest.cose beside its files) and request its install; Refused or FetchError otherwise.

    ``ca`` is a PEM bundle of the CAs an https server's certificate may chain to (None: the system's). A release whose files
    would leave less than ``keep_free`` bytes free on the disk is refused (no_space) before anything is downloaded."""
    target = target or this_target()
    work = update_dir(state)
    blobs = work / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    link = _Link(url, max_bytes, ca)
    data = link.small(MANIFEST_FILE, MAX_MANIFEST_BYTES)
    now = time.time() if now is None else now
    try:
        trust = _trust(link, data, release_key, work)
        manifest = read_manifest(data, key_for(data, trust, now=now))
        check_for_device(manifest, now=now, target=target, installed=installed)
        _not_failed_before(work, manifest.version)
    except Refused as exc:
        record_outcome(work, {"state": "refused", "reason": exc.reason, "detail": str(exc), "url": url})
        raise
    reused = 0
    holdings = _Holdings(opt, blobs)
    try:
        _room_for(work, manifest, target, holdings, keep_free)
        for entry in manifest.files_for(target):
            blob = blobs / entry.sha256.hex()
            if blob.exists():
                reused += 1
                continue
            held = holdings.find(entry.sha256)
            part = blobs / f"{entry.sha256.hex()}.part"
            if held is not None:
                shutil.copyfile(held, part)
                reused += 1
            else:
                resuming = part.exists() and part.stat().st_size > 0  # a download under way is finished, not replaced
                if resuming or not _by_delta(manifest, entry, part, link, holdings):
                    link.into(entry.path, part, entry.size)
            _keep(part, entry, blob, f"{link.base}{entry.path}")
    except Refused as exc:
        record_outcome(work, {"state": "refused", "version": manifest.version, "reason": exc.reason, "detail": str(exc), "url": url})
        raise
    except FetchError as exc:
        exc.downloaded = link.bytes
        record_outcome(work, {"state": "downloading", "version": manifest.version, "detail": str(exc), "url": url})
        raise
    except OSError as exc:
        _full_disk(work, manifest, exc)
        raise
    try:
        extend_chain(work / ROLLOVER_FILE, trust)
        bundle = _assemble(work, manifest, data, target, trust.chain)
        record_outcome(work, {"state": "requested", "version": manifest.version, "url": url, "bytes": link.bytes, "requests": link.requests})
        write_json(work / REQUEST_FILE, {"version": manifest.version, "bundle": str(bundle), "requested_ms": int(time.time() * 1000)})
    except OSError as exc:
        _full_disk(work, manifest, exc)
        raise
    _prune(blobs, manifest, target)
    return Fetched(manifest.version, bundle, link.bytes, link.requests, reused)


def _room_for(work: Path, manifest: Manifest, target: str, holdings: _Holdings, keep_free: int) -> None:
    """Refuse (no_space) before downloading when the files still to fetch would leave less than ``keep_free`` bytes on the disk:
    the spool shares it, and the readings come first."""
    needed = sum(entry.size for entry in manifest.files_for(target)
                 if not (work / "blobs" / entry.sha256.hex()).exists() and holdings.find(entry.sha256) is None)
    disk = os.statvfs(work)
    free = disk.f_bavail * disk.f_frsize
    if needed + keep_free > free:
        raise Refused("no_space", f"{work}: release {manifest.version} needs {needed} bytes and {keep_free} stay free for the spool, "
                                  f"but {free} are free; the running version is untouched")


def _full_disk(work: Path, manifest: Manifest, exc: OSError) -> None:
    """The disk filled up under the download: give back what this release took so far and refuse it (no_space); other errors pass."""
    if exc.errno != errno.ENOSPC:
        return
    for part in (work / "blobs").glob("*.part"):
        part.unlink(missing_ok=True)
    shutil.rmtree(work / "releases" / f".{manifest.version}.building", ignore_errors=True)
    detail = f"{work}: the disk filled up while release {manifest.version} was downloaded; what it took is freed, the running version is untouched"
    record_outcome(work, {"state": "refused", "version": manifest.version, "reason": "no_space", "detail": detail})
    raise Refused("no_space", detail) from None


# The newest outcome a full disk kept from being written, per update directory: the status report still tells of it.
_UNWRITTEN: dict[Path, dict[str, object]] = {}


def record_outcome(work: Path, record: dict[str, object]) -> None:
    """The last download's outcome in ``fetched.json``, with when it was reached (the status report shows the newer of this and the
    install's); when the disk is too full to write it, kept in memory for this process's status reports (unwritten_outcome)."""
    stamped = {**record, "ts_ms": int(time.time() * 1000)}
    try:
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / FETCHED_FILE, stamped)
    except OSError:
        _UNWRITTEN[work] = stamped
        (work / f".{FETCHED_FILE}.tmp").unlink(missing_ok=True)
    else:
        _UNWRITTEN.pop(work, None)


def unwritten_outcome(work: Path) -> dict[str, object] | None:
    """An outcome record_outcome could not write to disk, if the newest one was such."""
    return _UNWRITTEN.get(work)



def _not_failed_before(work: Path, version: str) -> None:
    """A version rolled back on this device is not fetched again: it would fail the same way (docs/updates.md)."""
    try:
        outcome = json.loads((work / INSTALLED_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return
    if isinstance(outcome, dict) and version in (outcome.get("rolled_back_versions") or ()):
        reason = outcome.get("reason", "no reason recorded") if outcome.get("version") == version else "see the installer's log"
        raise Refused("rolled_back", f"release {version} was rolled back on this device ({reason})")


def _trust(link: _Link, data: bytes, anchor: Ed25519PublicKey, work: Path) -> Trust:
    """The release keys trusted: from the anchor along the chain kept here, and along the release's rollover.cbor when its
    manifest is signed by a key that chain does not reach (a rotation this device has not heard of yet)."""
    kept = load_chain(work / ROLLOVER_FILE)
    trust = trust_from(anchor, kept)
    try:
        signer = release_key_id(data)
    except ProtocolError:
        return trust  # read_manifest names what is wrong with it
    if signer in trust.keys:
        return trust
    try:
        served = read_chain(link.small(ROLLOVER_FILE, MAX_CHAIN_BYTES), where=link.base + ROLLOVER_FILE)
    except FetchError:
        return trust  # no chain there: read_manifest refuses the unknown key (wrong_key)
    return trust_from(anchor, kept, served)


def served_chain(url: str, *, ca: str | Path | None = None) -> tuple[bytes, ...]:
    """The rollover chain a release's server offers beside its manifest (nothing when it has none: 404); FetchError otherwise."""
    link = _Link(url, 0, ca)
    try:
        return read_chain(link.small(ROLLOVER_FILE, MAX_CHAIN_BYTES), where=link.base + ROLLOVER_FILE)
    except FetchError as exc:
        if exc.status == 404:
            return ()
        raise


def _assemble(work: Path, manifest: Manifest, data: bytes, target: str, chain: tuple[bytes, ...]) -> Path:
    """The release's bundle for this target under ``releases/<version>``, built beside and renamed into place."""
    releases = work / "releases"
    releases.mkdir(exist_ok=True)
    final = releases / manifest.version
    building = releases / f".{manifest.version}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    (building / MANIFEST_FILE).write_bytes(data)
    if chain:  # the installer walks it from /etc/ocn-edge/release.pub as this device did
        (building / ROLLOVER_FILE).write_bytes(cbor2.dumps(list(chain)))
    for entry in manifest.files_for(target):
        destination = building / entry.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.link(work / "blobs" / entry.sha256.hex(), destination)
    check_files(building, manifest.files_for(target))  # the assembled whole, as the installer will see it
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)
    _fsync_dir(releases)
    for old in releases.iterdir():  # one release at a time is kept on the gateway's side
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _prune(blobs: Path, manifest: Manifest, target: str) -> None:
    keep = {entry.sha256.hex() for entry in manifest.files_for(target)}
    for blob in blobs.iterdir():
        if blob.name not in keep and not blob.name.endswith(".part"):
            blob.unlink()
