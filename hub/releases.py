"""Release bundles the hub keeps and serves to gateways (docs/updates.md, "From the hub"), with HTTP range requests.

``ocn-edge hub release add BUNDLE --key release.pub`` checks a bundle as a gateway would (every file
of every target, its deltas, the signature by the city's release key) and copies it into the
hub's state directory, under ``releases/<version>/``, beside its final name then renamed. The hub
serves ``GET /releases/<version>/<path>`` for the manifest and the files the manifest names, and
nothing else: a gateway downloads only what it lacks and resumes with ``Range``. Bundles are
signed, not secret: no token is asked for, like the transparency register.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.update.manifest import Manifest, Refused
from edge.update.rollover import check_trusted_bundle, check_trusted_manifest

__all__ = ["RELEASES", "ReleaseError", "add_release", "list_releases", "routes"]

RELEASES = web.AppKey("releases", Path)  # the folder release bundles are kept in (<state_dir>/releases)
_VERSION_RE = re.compile(r"^[0-9][0-9.]{0,40}$")
routes = web.RouteTableDef()


class ReleaseError(Exception):
    """A bundle the hub will not keep; the message names the bundle and the reason."""


def add_release(releases: Path, bundle: Path, release_key: Ed25519PublicKey, *, now: float | None = None) -> Manifest:
    """Check ``bundle`` and keep a copy as ``releases/<version>``; the verified manifest."""
    try:
        manifest, _ = check_trusted_bundle(bundle, release_key, now=time.time() if now is None else now)
    except Refused as exc:
        raise ReleaseError(f"{bundle}: refused ({exc.reason}): {exc}") from None
    final = releases / manifest.version
    if final.exists():
        raise ReleaseError(f"{bundle}: release {manifest.version} is kept already ({final}); a release is never replaced")
    releases.mkdir(parents=True, exist_ok=True)
    building = releases / f".{manifest.version}.adding"
    shutil.rmtree(building, ignore_errors=True)
    shutil.copytree(bundle, building)
    building.rename(final)
    return manifest


def list_releases(releases: Path, release_key: Ed25519PublicKey) -> list[Manifest]:
    """The releases kept, oldest version first (each manifest verified again)."""
    found = []
    for folder in sorted(releases.glob("[0-9]*")) if releases.is_dir() else ():
        try:
            found.append(check_trusted_manifest(folder, release_key))
        except (OSError, Refused):
            continue
    return sorted(found, key=lambda manifest: tuple(int(part) for part in manifest.version.split(".")))


def _inside(folder: Path, path: str) -> Path | None:
    """``folder/path`` if it is a file of the kept bundle: no "..", no hidden name, nothing outside the folder."""
    parts = path.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return None
    target = folder.joinpath(*parts)
    return target if target.is_file() and target.resolve().is_relative_to(folder.resolve()) else None


@routes.get("/releases/{version}/{path:.+}")
async def release_file(request: web.Request) -> web.StreamResponse:
    version, path = request.match_info["version"], request.match_info["path"]
    releases = request.app.get(RELEASES)  # set by run_hub; an application built without a state directory keeps none
    target = _inside(releases / version, path) if releases is not None and _VERSION_RE.match(version) else None
    if target is None:
        raise web.HTTPNotFound(text=f"no release file {version}/{path} at this hub\n")
    # FileResponse answers Range requests (206) and If-Range, as a resumed download needs.
    return web.FileResponse(target, headers={"Cache-Control": "public, max-age=31536000, immutable"})
