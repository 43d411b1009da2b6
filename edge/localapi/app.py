"""The aiohttp application behind the local API: ``/``, ``/notice``, ``/notice.json`` and ``/status``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

__all__ = ["create_app"]

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


def create_app(
    *,
    notice_html: str | Callable[[], str],
    notice_json: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    status: Callable[[], Mapping[str, Any]],
) -> web.Application:
    """Build the local API; the runtime binds it to ``[local_api].listen`` (127.0.0.1 only).

    ``notice_html`` and ``notice_json`` may be values or callables (so a reloaded policy
    shows at once); ``status`` is called on every request to ``/status``.
    """

    def html() -> str:
        return notice_html() if callable(notice_html) else notice_html

    def notice() -> Mapping[str, Any]:
        return notice_json() if callable(notice_json) else notice_json

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html(), content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def notice_document(request: web.Request) -> web.Response:
        return web.Response(text=_dumps(notice()), content_type="application/json", headers=_HEADERS)

    async def status_document(request: web.Request) -> web.Response:
        return web.Response(
            text=_dumps(status()),
            content_type="application/json",
            headers={**_HEADERS, "Cache-Control": "no-store"},
        )

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/notice", page)
    app.router.add_get("/notice.json", notice_document)
    app.router.add_get("/status", status_document)
    return app
