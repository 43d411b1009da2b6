"""The local API bound to ``[local_api] listen`` (127.0.0.1 by default), started and stopped with the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp.web_server import Server

from edge.commissioning import Commissioning
from edge.localapi.access import AccessToken, needs_token
from edge.localapi.app import create_app
from edge.protocol.types import Reading
from edge.schema import HostPort

__all__ = ["LocalApi", "LocalApiError"]


_SHUTDOWN_S = 60.0  # what aiohttp.web's runner gave requests in flight at a stop


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
        # aiohttp's low-level server, as aiohttp.web's runner would start it, without the runner (edge.localapi.app).
        self._server = Server(app, access_log=None)
        self._listener: asyncio.Server | None = None

    @property
    def addresses(self) -> list[Any]:
        """Where it listens (host, port, …): a port of 0 in the config is known only here."""
        return [sock.getsockname() for sock in self._listener.sockets] if self._listener else []

    @property
    def url(self) -> str | None:
        """Where a program on this gateway reaches it (a wildcard listen address read as loopback), once it listens."""
        if not self.addresses:
            return None
        host, port = self.addresses[0][:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    async def start(self, listen: HostPort) -> None:
        self.access.required = needs_token(listen.host)
        try:
            self._listener = await asyncio.get_running_loop().create_server(self._server, listen.host, listen.port)
        except OSError as exc:
            raise LocalApiError(
                f"local_api.listen = {str(listen)!r}: cannot listen there ({exc.strerror or exc}); "
                "change [local_api] listen or set enabled = false"
            ) from None

    async def aclose(self) -> None:
        """Stop listening; nothing to do if it never started."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # As aiohttp.web's runner stops: no new connections, requests already read answered, idle ones closed.
            listener.close()
            await asyncio.sleep(0)
            self._server.pre_shutdown()
            await self._server.shutdown(_SHUTDOWN_S)
            await listener.wait_closed()
