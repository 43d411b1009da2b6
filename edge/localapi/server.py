"""The local API bound to ``[local_api] listen`` (127.0.0.1 by default), started and stopped with the pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.commissioning import Commissioning
from edge.localapi.access import AccessToken, needs_token
from edge.localapi.app import create_app
from edge.protocol.types import Reading
from edge.schema import HostPort

__all__ = ["LocalApi", "LocalApiError"]


class LocalApiError(Exception):
    """The local API cannot listen where configured; the message names the setting and what to change."""


class LocalApi:
    """The notice, the status document, the technician's page, the metrics and the commissioning actions, served while the gateway runs.

    Beyond loopback all but the notice need the access token kept (hashed) in ``state_dir``.
    """

    def __init__(
        self,
        *,
        notice_html: Callable[[str], str],  # the notice page in a language
        notice_json: Callable[[], Mapping[str, Any]],
        status: Callable[[], Mapping[str, Any]],
        latest: Callable[[], Mapping[str, Reading]] = dict,
        state_dir: str | Path | None = None,
        public_notice: bool = True,
        commissioning: Commissioning | None = None,
    ) -> None:
        self.access = AccessToken(state_dir)
        app = create_app(notice_html=notice_html, notice_json=notice_json, status=status, latest=latest,
                         access=self.access, public_notice=public_notice, commissioning=commissioning)
        self._runner = web.AppRunner(app, access_log=None)
        self._set_up = False

    @property
    def addresses(self) -> list[Any]:
        """Where it listens (host, port, …): a port of 0 in the config is known only here."""
        return list(self._runner.addresses)

    @property
    def url(self) -> str | None:
        """Where a program on this gateway reaches it (a wildcard listen address read as loopback), once it listens."""
        if not self._set_up or not self._runner.addresses:
            return None
        host, port = self._runner.addresses[0][:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    async def start(self, listen: HostPort) -> None:
        self.access.required = needs_token(listen.host)
        await self._runner.setup()
        self._set_up = True
        try:
            await web.TCPSite(self._runner, listen.host, listen.port).start()
        except OSError as exc:
            raise LocalApiError(
                f"local_api.listen = {str(listen)!r}: cannot listen there ({exc.strerror or exc}); "
                "change [local_api] listen or set enabled = false"
            ) from None

    async def aclose(self) -> None:
        """Stop listening; nothing to do if it never started."""
        if self._set_up:
            self._set_up = False
            await self._runner.cleanup()
