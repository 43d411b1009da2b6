"""OXP over HTTP: one POST per message to ``<hub>/oxp/v1/…``, the hub's JSON answer read back as an ack or a refusal.

The only module of the gateway that speaks aiohttp to the hub.  It also counts what HTTP
itself carries around each message (request line, headers, the whole answer, a redirect's
second copy), because a metered link bills those bytes like the batch.  Desired state comes
back in the answer to a status report (OXP §7): a pull, handed to the listener like a push; a
long poll on its ETag (and the ETag in each batch ack) says when that pull is worth making.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

from edge import __version__
from edge.protocol import MEDIA_TYPE
from edge.protocol.reasons import Answer, Status
from edge.transport.answers import ack_of
from edge.transport.contract import Ack, DesiredListener, DesiredNews, DesiredOffer, Refused, Taken, TransportError, UplinkError
from edge.transport.tls import tls_context
from edge.util.linkwords import link_problem
from edge.util.loading import load_module

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

__all__ = ["HttpTransport"]

# A hub answers these for a message that will never be accepted, however often it is sent.
_PERMANENT: dict[int, str] = {Status.INVALID: Answer.MALFORMED, Status.UNAUTHENTICATED: Answer.BAD_SIGNATURE, Status.TOO_LARGE: Answer.TOO_LARGE}
_MAX_RETRY_AFTER_S = 86400.0
# An ack is a few hundred bytes; a reply larger than this is garbage and is not read further.
_MAX_REPLY_BYTES = 64 * 1024
_MAX_KEY_BYTES = 16_384
# How long an idle connection to the hub is kept for the next message.  aiohttp's 15 s closed it between two batches
# (30 s apart by default), so every batch opened a new connection; under the idle limits of the reference hub (75 s)
# and of common proxies and load balancers (60 s), so the gateway, not the far end, closes an idle one.
_KEEPALIVE_S = 50.0


class _Route(NamedTuple):
    """How requests reach the hub, as the service's environment says: a proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) and .netrc credentials."""

    proxy: URL | None
    proxy_headers: dict[str, str] | None  # for the CONNECT to an https hub: Proxy-Authorization, from the proxy's URL or .netrc
    headers: dict[str, str]  # on every request: Authorization for the hub (.netrc), Proxy-Authorization for an http hub


def _route_from_environment(hub_url: str) -> _Route:
    """Read once (in a worker thread: .netrc is a file) what aiohttp's trust_env read again before every request (twice, in worker threads).

    A city network that lets traffic out only through a proxy sets HTTPS_PROXY in the service's environment
    (docs/spool-and-uplink.md); the environment of a running process does not change, and the hub's URL neither.
    aiohttp's own readers, so the proxy chosen, NO_PROXY and .netrc are read as trust_env=True read them.
    """
    from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
    from yarl import URL

    url = URL(hub_url)
    try:
        proxy, proxy_auth = get_env_proxy_for_url(url)
    except LookupError:
        proxy, proxy_auth = None, None
    try:
        auth = basicauth_from_netrc(netrc_from_env(), url.host) if url.host else None
    except LookupError:
        auth = None
    to_hub = {"Authorization": auth.encode()} if auth else {}
    to_proxy = {"Proxy-Authorization": proxy_auth.encode()} if proxy_auth else {}
    if url.scheme == "https":  # the proxy reads its credentials on the CONNECT that opens the tunnel
        return _Route(proxy, to_proxy or None, to_hub)
    return _Route(proxy, None, {**to_hub, **to_proxy})  # a plain-http request goes to the proxy whole: they travel with it


class HttpTransport:
    """OXP v1 over HTTP(S) to one hub, through one aiohttp session opened on first use."""

    def __init__(self, hub_url: str, *, ca: str | Path | None = None, timeout_s: float = 30.0) -> None:
        if not hub_url.startswith(("http://", "https://")):
            raise UplinkError(f"uplink hub = {hub_url!r}: expected an http:// or https:// URL")
        self.hub_url = hub_url.rstrip("/")
        self._ssl = tls_context(ca) if self.hub_url.startswith("https://") else None
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._route = _Route(None, None, {})
        self._on_desired: DesiredListener | None = None

    @property
    def hub(self) -> str:
        return self.hub_url

    def listen(self, on_desired: DesiredListener) -> None:
        self._on_desired = on_desired

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # aiohttp (~0.2 s of CPU to import: it loads the system's CA store at import) is loaded at the first
            # exchange, after `ocn-edge run` has its first reading (edge.util.loading; issue 17's start-up target).
            await load_module("aiohttp")
            route = await asyncio.to_thread(_route_from_environment, self.hub_url)
            if self._session is None:  # another exchange may have made it while this one waited
                self._route = route
                self._session = self._new_session(route)
        return self._session

    def _new_session(self, route: _Route) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, keepalive_timeout=_KEEPALIVE_S)
        return aiohttp.ClientSession(
            connector=connector,
            proxy=route.proxy,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers={"User-Agent": f"ocn-edge/{__version__}", **route.headers},
            # The hub answers small JSON and no content negotiation happens: Accept and
            # Accept-Encoding would only add 45 bytes to every batch on a metered link.
            skip_auto_headers=("Accept", "Accept-Encoding"),
        )

    async def _post(self, path: str, data: bytes) -> tuple[int, Mapping[str, str], bytes, int] | Refused:
        """POST ``data``: (status, headers, body, framing bytes), or a retryable refusal when no answer came."""
        session = await self._http()
        import aiohttp  # loaded by _http

        try:
            async with session.post(f"{self.hub_url}{path}", data=data, headers={"Content-Type": MEDIA_TYPE},
                                    proxy_headers=self._route.proxy_headers) as resp:
                body = await _read_body(resp, _MAX_REPLY_BYTES)
                return resp.status, resp.headers, body, _framing(resp, len(body))
        except TimeoutError:
            return Refused(False, "", "timed out waiting for the hub")
        except (aiohttp.ClientError, OSError) as exc:
            return Refused(False, "", link_problem(exc))

    async def send_batch(self, data: bytes) -> Ack | Refused:
        answer = await self._post("/oxp/v1/batches", data)
        if isinstance(answer, Refused):
            return answer
        status, headers, body, overhead = answer
        document = _json_object(body)
        if status == 200:
            if document is None:
                return Refused(False, "", "hub answered 200 without a JSON ack", overhead_bytes=overhead)
            ack = ack_of(document, overhead)
            if ack is None:
                return Refused(False, "", "hub answered 200 with an ack that names no batch", overhead_bytes=overhead)
            return ack
        code = str(document.get("error", "")) if document else ""
        detail = str(document.get("detail", "")) if document else body[:200].decode("utf-8", "replace")
        if status in _PERMANENT and (code or status == Status.TOO_LARGE):
            return Refused(True, code or _PERMANENT[status], detail, overhead_bytes=overhead)
        retry_after = _retry_after(headers.get("Retry-After")) if status in (Status.SLOW_DOWN, Status.UNAVAILABLE) else None
        message = f"hub answered {status}" + (f" {code}" if code else "") + (f": {detail}" if detail else "")
        return Refused(False, code, message, retry_after=retry_after, overhead_bytes=overhead)

    async def _send_report(self, path: str, data: bytes) -> tuple[Taken | Refused, dict[str, Any] | None]:
        answer = await self._post(path, data)
        if isinstance(answer, Refused):
            return answer, None
        status, _, body, overhead = answer
        document = _json_object(body)
        if status == 200 and document is not None and document.get("ok") is True:
            return Taken(overhead_bytes=overhead), document
        code = str(document.get("error", "")) if document else ""
        if status == Status.CONFLICT:
            code = code or Answer.STALE
        detail = str(document.get("detail", "")) if document else ""
        return Refused(status in _PERMANENT or status == Status.CONFLICT, code, f"hub answered {status}" + (f": {detail}" if detail else ""),
                       overhead_bytes=overhead), None

    async def send_status(self, data: bytes) -> Taken | Refused:
        outcome, document = await self._send_report("/oxp/v1/status", data)
        if document is not None and self._on_desired is not None:
            self._on_desired(DesiredOffer(document.get("desired"), str(document.get("etag", ""))))
        return outcome

    async def publish_notice(self, data: bytes) -> Taken | Refused:
        return (await self._send_report("/oxp/v1/notice", data))[0]

    async def watch_desired(self, device_id: str, known_etag: str, wait_s: float) -> DesiredNews:
        """GET /oxp/v1/desired/<id>?wait=… with If-None-Match: a long poll the hub holds until the ETag changes (OXP §8.4)."""
        url = f"{self.hub_url}/oxp/v1/desired/{quote(device_id, safe='')}?wait={wait_s:g}"
        session = await self._http()
        import aiohttp  # loaded by _http

        timeout = aiohttp.ClientTimeout(total=wait_s + self._timeout_s)
        try:
            async with session.get(url, headers={"If-None-Match": f'"{known_etag}"'}, timeout=timeout,
                                   proxy_headers=self._route.proxy_headers) as resp:
                body = await _read_body(resp, _MAX_REPLY_BYTES)
                overhead = _framing(resp, len(body))
                if resp.status == 304:
                    return DesiredNews(None, overhead)
                document = _json_object(body)
                if resp.status == 200 and document is not None and isinstance(document.get("etag"), str):
                    return DesiredNews(str(document["etag"]), overhead)
                # A hub from before the long poll answers 404 (or 405) without an OXP error code.
                unsupported = resp.status in (404, 405) and not (document and document.get("error"))
                return DesiredNews(None, overhead, error=f"hub answered {resp.status} to the desired-state wait", unsupported=unsupported)
        except TimeoutError:
            return DesiredNews(None, error="timed out waiting for the hub")
        except (aiohttp.ClientError, OSError) as exc:
            return DesiredNews(None, error=link_problem(exc))

    async def fetch_hub_key(self) -> bytes:
        url = self.hub_url + "/oxp/v1/hub-key"
        # Pinned on first use: only where nobody on the path can answer in the hub's place.
        if not (url.startswith("https://") or _is_loopback(url)):
            raise TransportError(
                f"uplink hub {self.hub_url!r} is plain http: the hub's key is pinned only over https (or on loopback), "
                "so desired documents are not applied"
            )
        session = await self._http()
        import aiohttp  # loaded by _http

        try:
            async with session.get(url, proxy_headers=self._route.proxy_headers) as resp:
                if resp.status != 200:
                    raise TransportError(f"GET {url} answered {resp.status}; cannot pin the hub's key yet")
                return await _read_body(resp, _MAX_KEY_BYTES)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = "timed out waiting for the hub" if isinstance(exc, TimeoutError) else link_problem(exc)
            raise TransportError(f"cannot fetch the hub's key from {url}: {why}") from None


async def _read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body up to ``limit`` bytes, however many TCP segments it came in.

    ``content.read(n)`` returns as soon as some bytes are there: a body split by the network
    (a proxy, a slow link) would otherwise be cut short and an ack taken for no answer.
    """
    body = bytearray()
    while len(body) < limit:
        chunk = await resp.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _framing(resp: aiohttp.ClientResponse, body_bytes: int) -> int:
    """What HTTP carried around a message: the request line and headers, and the whole answer.

    On a metered link they are billed like the batch (about 380 bytes an exchange with the
    reference hub). TLS records, TCP and IP headers are not counted.
    """
    from aiohttp import HttpVersion11  # an answer came: aiohttp is loaded

    sent = received = 0
    # A redirect (a hub moved behind a 307/308) is one more exchange each: its request, the
    # message sent again (counted here; the first copy is the caller's) and its answer.
    for hop, answer in enumerate((*resp.history, resp)):
        info = answer.request_info
        sent += len(f"{info.method} {info.url.raw_path_qs} HTTP/1.1\r\n") + 2
        sent += sum(len(name) + len(value) + 4 for name, value in info.headers.items())
        if hop:
            sent += _content_length(info.headers)
        version = answer.version or HttpVersion11  # None only before an answer was read
        received += len(f"HTTP/{version.major}.{version.minor} {answer.status} {answer.reason or ''}\r\n") + 2
        received += sum(len(name) + len(value) + 4 for name, value in answer.raw_headers)
        received += body_bytes if answer is resp else _content_length(answer.headers)
    return sent + received


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _content_length(headers: Mapping[str, str]) -> int:
    """The Content-Length a message declares, 0 if none or unreadable."""
    try:
        return max(0, int(headers.get("Content-Length", "0")))
    except ValueError:
        return 0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime  # a hub that gives a date is rare: not loaded at start for it

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
