"""The aiohttp application behind the local API: the public notice (``/``, ``/notice``, ``/notice.json``), and for the
technician ``/status``, the page ``/technician`` (with ``/technician.json`` behind it), ``/metrics`` and the two
commissioning actions, ``POST /devices/{name}/read`` and ``POST /buses/{name}/scan`` (edge.commissioning)."""

from __future__ import annotations

import datetime
import functools
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp.web_exceptions import HTTPMethodNotAllowed, HTTPNotFound
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse, json_response

from edge.commissioning import Commissioning, CommissioningError
from edge.localapi.access import COOKIE, AccessToken, cross_site
from edge.localapi.view import technician_view
from edge.privacy.catalogue import best_language
from edge.privacy.notice import notice_languages
from edge.protocol.types import Reading

if TYPE_CHECKING:
    import jinja2

    from edge.metrics import GatewayMetrics

__all__ = ["PUBLIC_PATHS", "Handler", "create_app"]

# What anyone may read wherever the API listens (the notice is meant for passers-by); the rest needs the token beyond loopback.
PUBLIC_PATHS = frozenset({"/", "/notice", "/notice.json"})

# The notice page is static text: nothing may load scripts, frames or anything from elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=1, sort_keys=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else f"{minutes} min {s % 60} s" if minutes else f"{s} s"


def _when(ms: int | None) -> str:
    if not ms:
        return "—"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def _hub(hub: Mapping[str, Any] | None) -> str:
    if not hub:
        return "no hub configured"
    state = "reachable" if hub["reachable"] else "unreachable" + (f": {hub['last_error']}" if hub["last_error"] else "")
    return f"{hub['url']} — {state}"


def _spool(spool: Mapping[str, Any]) -> str:
    age = f", oldest {_duration(spool['oldest_age_s'])}" if spool.get("oldest_age_s") else ""
    return f"{spool['batches']} batches, {_size(spool['bytes'])}{age}"


@functools.cache
def _templates() -> jinja2.Environment:
    # jinja2 and prometheus_client load at the first page or scrape, not at start: most gateways are never
    # looked at between restarts, and the resident set is a target (bench.gateway_load).
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("edge.localapi", "templates"), autoescape=True)
    env.filters.update(duration=_duration, when=_when, size=_size, hub=_hub, spool=_spool)
    return env


def _page_headers(nonce: str) -> dict[str, str]:
    # The page's one inline script may run (by its nonce) and fetch from this gateway; nothing else loads.
    return {**_HEADERS, "Cache-Control": "no-store", "Content-Security-Policy":
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


# The local API is one handler on aiohttp's low-level server (aiohttp.web_server), with its nine routes looked up
# below: aiohttp.web's application, router and runner (with html.entities, file responses and websockets behind
# them) are ~1 MiB more resident in every gateway for months (issue 17's RssAnon target; bench.gateway_load).
Handler = Callable[[BaseRequest], Awaitable[StreamResponse]]


def _problem(status: int, error: str, detail: str) -> Response:
    return json_response({"error": error, "detail": detail}, status=status, headers={**_HEADERS, "Cache-Control": "no-store"})


async def _action_body(request: BaseRequest, access: AccessToken) -> dict[str, Any] | Response:
    """The JSON body of a commissioning request, or the answer refusing it: from another site's page, or not JSON.

    JSON only: a form another site submits cannot send ``Content-Type: application/json``
    without the browser asking first, and this API answers no such question.
    """
    why = cross_site(request.headers, request.host, tokenless=not access.required)
    if why is not None:
        return _problem(403, "cross_site", f"a commissioning action must come from this gateway's own page or a script ({why})")
    if request.content_type != "application/json":
        return _problem(415, "json_only", "send a JSON object (Content-Type: application/json), e.g. {}")
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _problem(400, "bad_request", "the body must be a JSON object, e.g. {}")
    return body


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise CommissioningError(f"{key} = {value!r}: expected a number of seconds")
    return None if value is None else float(value)


def _text(body: Mapping[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise CommissioningError(f"{key} = {value!r}: expected a string, e.g. {default!r}")
    return value


def _guard(access: AccessToken, handler: Handler, *, public_notice: bool) -> Handler:
    """Beyond loopback, every route but the public notice needs the token: ``Authorization: Bearer``, or the cookie a ``?token=`` link sets.

    It answers before the route is looked up, so without the token an unknown path is a 401 too.
    """

    async def guard(request: BaseRequest) -> StreamResponse:
        if not access.required or (public_notice and request.path in PUBLIC_PATHS):
            return await handler(request)
        link_token = request.query.get("token")
        if link_token is not None and request.method == "GET" and access.accepts(link_token):
            # The login link: the token moves into a cookie and out of the address bar and history.
            answer = Response(status=303, headers={**_HEADERS, "Location": request.path})
            answer.set_cookie(COOKIE, link_token, httponly=True, samesite="Strict", path="/")
            return answer
        header = request.headers.get("Authorization", "")
        presented = header[len("Bearer "):].strip() if header.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        if access.accepts(presented):
            return await handler(request)
        detail = ("the local API listens beyond 127.0.0.1, so it needs an access token; none is set: "
                  "run `ocn-edge access-token create --config <gateway.toml>` on the gateway") if not access.configured() else \
            "send the local API's access token: Authorization: Bearer <token>, or open the login link ocn-edge access-token create printed"
        return json_response({"error": "unauthorized", "detail": detail}, status=401,
                                 headers={**_HEADERS, "WWW-Authenticate": 'Bearer realm="ocn-edge"'})

    return guard


def create_app(
    *,
    notice_html: str | Callable[[str], str],
    notice_json: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    status: Callable[[], Mapping[str, Any]],
    latest: Callable[[], Mapping[str, Reading]] = dict,
    access: AccessToken | None = None,
    public_notice: bool = True,
    commissioning: Commissioning | None = None,
) -> Handler:
    """Build the local API, a handler for ``aiohttp.web_server.Server``; the runtime binds it to ``[local_api].listen`` (127.0.0.1 by default).

    ``notice_html`` and ``notice_json`` may be values or callables (so a reloaded policy
    shows at once); ``notice_html`` is called with the language the page is asked in:
    ``?lang=``, else the one ``Accept-Language`` ranks highest of the notice's languages, else its
    default.  ``status`` is called on every request to ``/status``, ``/technician``
    and ``/metrics``; ``latest`` gives the last released reading of each channel.  With
    ``access.required`` (set when listening beyond loopback) all but the public notice need
    the access token; ``public_notice=False`` makes the notice need it too.  ``commissioning``
    carries out "read now" and "scan" through the running bus owners (none: those routes answer 503).
    """
    access = access or AccessToken(None)
    metrics: list[GatewayMetrics] = []  # made at the first scrape

    def html(language: str) -> str:
        return notice_html(language) if callable(notice_html) else notice_html

    def notice() -> Mapping[str, Any]:
        return notice_json() if callable(notice_json) else notice_json

    async def page(request: BaseRequest) -> Response:
        languages = notice_languages(notice())
        asked = request.query.get("lang", "")
        language = asked if asked in languages else best_language(request.headers.get("Accept-Language", ""), languages) or languages[0]
        return Response(text=html(language), content_type="text/html", charset="utf-8",
                            headers={**_HEADERS, "Content-Language": language, "Vary": "Accept-Language"})

    async def notice_document(request: BaseRequest) -> Response:
        return Response(text=_dumps(notice()), content_type="application/json", headers=_HEADERS)

    async def status_document(request: BaseRequest) -> Response:
        return Response(
            text=_dumps(status()),
            content_type="application/json",
            headers={**_HEADERS, "Cache-Control": "no-store"},
        )

    def view() -> dict[str, Any]:
        return technician_view(status(), notice(), latest())

    async def technician_page(request: BaseRequest) -> Response:
        nonce = secrets.token_urlsafe(16)
        html = _templates().get_template("technician.html").render(v=view(), nonce=nonce)
        return Response(text=html, content_type="text/html", charset="utf-8", headers=_page_headers(nonce))

    async def technician_document(request: BaseRequest) -> Response:
        return Response(text=_dumps(view()), content_type="application/json", headers={**_HEADERS, "Cache-Control": "no-store"})

    async def metrics_document(request: BaseRequest) -> Response:
        if not metrics:
            from edge.metrics import GatewayMetrics

            metrics.append(GatewayMetrics(status))
        return Response(body=metrics[0].render(), headers={"Content-Type": metrics[0].content_type, "Cache-Control": "no-store"})

    Action = Callable[[Commissioning, dict[str, Any]], Awaitable[dict[str, Any]]]

    async def commission(request: BaseRequest, action: Action) -> Response:
        body = await _action_body(request, access)
        if isinstance(body, Response):
            return body
        if commissioning is None:
            return _problem(503, "unavailable", "this local API is not attached to a running gateway")
        try:
            result = await action(commissioning, body)
        except CommissioningError as exc:
            return _problem(exc.status, "refused", str(exc))
        return Response(text=_dumps(result), content_type="application/json", headers={**_HEADERS, "Cache-Control": "no-store"})

    async def read_device(request: BaseRequest, name: str) -> Response:
        async def action(gateway: Commissioning, body: dict[str, Any]) -> dict[str, Any]:
            wait = _number(body, "wait")
            return await gateway.read_device(name, wait=5.0 if wait is None else wait)

        return await commission(request, action)

    async def scan_bus(request: BaseRequest, name: str) -> Response:
        async def action(gateway: Commissioning, body: dict[str, Any]) -> dict[str, Any]:
            return await gateway.scan_bus(name, units=_text(body, "units", "1-16"), register=_text(body, "register", "holding:0"),
                                          timeout=_number(body, "timeout"))

        return await commission(request, action)

    pages: dict[str, Callable[[BaseRequest], Awaitable[Response]]] = {
        "/": page,
        "/notice": page,
        "/notice.json": notice_document,
        "/status": status_document,
        "/technician": technician_page,
        "/technician.json": technician_document,
        "/metrics": metrics_document,
    }
    actions: dict[str, Callable[[BaseRequest, str], Awaitable[Response]]] = {"devices/read": read_device, "buses/scan": scan_bus}

    async def route(request: BaseRequest) -> StreamResponse:
        # As aiohttp.web's router answered: GET (and HEAD) for the pages, POST for /devices/{name}/read and
        # /buses/{name}/scan (a name is one percent-decoded path segment), 405 naming the method a path takes, else 404.
        path = request.path
        if path in pages:
            if request.method not in ("GET", "HEAD"):
                raise HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
            return await pages[path](request)
        match = _ACTION.fullmatch(request.raw_path.partition("?")[0])
        action = actions.get(f"{match['kind']}/{match['verb']}") if match else None
        if match is None or action is None:
            raise HTTPNotFound()
        if request.method != "POST":
            raise HTTPMethodNotAllowed(request.method, ["POST"])
        return await action(request, unquote(match["name"]))

    return _guard(access, route, public_notice=public_notice)


_ACTION = re.compile(r"/(?P<kind>devices|buses)/(?P<name>[^{}/]+)/(?P<verb>read|scan)")
