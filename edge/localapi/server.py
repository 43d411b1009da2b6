"""The local API bound to ``[local_api] listen`` (127.0.0.1 by default), started and stopped with the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.localapi.access import AccessToken, needs_token
from edge.schema import HostPort
from edge.util.loading import load_module

if TYPE_CHECKING:
    from aiohttp.web_server import Server

    from edge.commissioning import Commissioning
    from edge.protocol.types import Reading

__all__ = ["LocalApi", "LocalApiError"]


log = logging.getLogger("ocn.localapi")

_SHUTDOWN_S = 60.0  # what aiohttp.web's runner gave requests in flight at a stop
_BACKLOG = 100  # asyncio's default for a listening socket


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("local API cannot answer: its HTTP server did not load", extra={"error": repr(task.exception())[:300]})


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
        self._app_args: dict[str, Any] = dict(notice_html=notice_html, notice_json=notice_json, status=status, latest=latest,
                                              access=self.access, public_notice=public_notice, commissioning=commissioning)
        self._server: Server | None = None
        self._connection: Callable[[], asyncio.Protocol] | None = None
        self._bad_requests: Any = None  # edge.util.httpwords.BadRequests, once the server has loaded
        self._listener: asyncio.Server | None = None
        self._serving: asyncio.Task[None] | None = None

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
        """Listen at ``listen`` now (a port taken is a start error); answer once the HTTP server is loaded.

        The HTTP server (aiohttp, ~0.2 s of CPU to import) is loaded after `ocn-edge run` has its first
        reading (edge.util.loading; issue 17's start-up target): a request made meanwhile waits in the
        socket's backlog and is answered when it is loaded.
        """
        self.access.required = needs_token(listen.host)
        try:
            self._listener = await asyncio.get_running_loop().create_server(self._protocol, listen.host, listen.port, start_serving=False)
        except OSError as exc:
            from edge.util.linkwords import listen_problem

            raise LocalApiError(
                f"local_api.listen = {str(listen)!r}: cannot listen there ({listen_problem(exc)}); "
                "change [local_api] listen or set enabled = false"
            ) from None
        for sock in self._listener.sockets:  # the kernel takes connections into the backlog from now on
            with sock.dup() as listening:
                listening.listen(_BACKLOG)
        self._serving = asyncio.create_task(self._serve(self._listener), name="local API")
        self._serving.add_done_callback(_log_failure)

    async def _serve(self, listener: asyncio.Server) -> None:
        await load_module("edge.localapi.app")
        from aiohttp.web_server import Server

        from edge.localapi.app import create_app
        from edge.util.httpwords import BadRequests, OurWordsHandler

        # aiohttp's low-level server, as aiohttp.web's runner would start it, without the runner (edge.localapi.app).
        self._server = Server(create_app(**self._app_args), access_log=None)
        # Its connections log in our words: a malformed request counted and said at most once a minute, never aiohttp's lines.
        bad_requests = self._bad_requests = BadRequests(log)
        server = self._server
        loop = asyncio.get_running_loop()
        self._connection = lambda: OurWordsHandler(server, bad_requests=bad_requests, loop=loop, **server._kwargs)
        await listener.start_serving()

    def _protocol(self) -> asyncio.Protocol:
        """A connection's handler, made as the server's would be; both exist before the listener accepts anything."""
        assert self._connection is not None, "the local API accepted a connection before its server was loaded"
        return self._connection()

    async def aclose(self) -> None:
        """Stop listening; nothing to do if it never started."""
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        listener, self._listener = self._listener, None
        if listener is not None:
            # As aiohttp.web's runner stops: no new connections, requests already read answered, idle ones closed.
            listener.close()
            await asyncio.sleep(0)
            if self._server is not None:
                self._server.pre_shutdown()
                await self._server.shutdown(_SHUTDOWN_S)
            await listener.wait_closed()
        if self._bad_requests is not None:
            self._bad_requests.close()
