"""A small real OXP ingest server for the pipeline tests: verifies, dedupes on identity, acks — and misbehaves on cue.

It implements the receiving half of OXP v1 (`POST /oxp/v1/batches`,
`POST /oxp/v1/status`) with `open_batch`/`open_status`, so the uplink is
tested against the contract rather than against the reference hub.  Each
request takes the next behaviour from ``schedule`` (then ``default``):

- ``ok``: verify, store once, ack;
- ``fail``: 500 with an HTML body;
- ``stall``: never answer (the client times out);
- ``garbage``: 200 with bytes that are not JSON;
- ``store_then_garbage``: store the batch, then answer garbage (the resend must be deduped);
- ``busy``: 503 with Retry-After;
- ``rate``: 429 with Retry-After;
- ``wrong_ack``: 200 with an ack naming another sequence number;
- ``reset``: drop the connection without answering;
- ``reject``: 400 malformed (a permanent rejection);
- ``too_large``: 413 with an HTML body, as a proxy in front of the hub would answer.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.protocol import Batch, ProtocolError, key_id, open_batch, open_status, peek_header

__all__ = ["Receiver"]


@dataclass
class Receiver:
    """The server's state: known device keys, stored batches, and what each request got."""

    keys: dict[bytes, Ed25519PublicKey] = field(default_factory=dict)
    schedule: list[str] = field(default_factory=list)
    default: str = "ok"
    retry_after: str = "0"
    latency_s: tuple[float, float] = (0.0, 0.0)
    batches: dict[tuple[bytes, int, int], Batch] = field(default_factory=dict)
    posts: Counter[tuple[bytes, int, int]] = field(default_factory=Counter)
    behaviours: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    status_reports: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    def trust(self, public_key: Ed25519PublicKey) -> None:
        self.keys[key_id(public_key)] = public_key

    def readings(self) -> list[tuple[str, int, Any]]:
        """Every stored reading as (channel, ts_ms, value), in storage order."""
        return [(r.channel, r.ts_ms, r.value) for b in self.batches.values() for r in b.readings]

    async def start(self, *, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/oxp/v1/batches", self._batches)
        app.router.add_post("/oxp/v1/status", self._status)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _next(self) -> str:
        behaviour = self.schedule.pop(0) if self.schedule else self.default
        self.behaviours.append(behaviour)
        self.times.append(time.monotonic())
        return behaviour

    async def _batches(self, request: web.Request) -> web.StreamResponse:
        behaviour = self._next()
        data = await request.read()
        if self.latency_s[1] > 0:
            await asyncio.sleep(random.uniform(*self.latency_s))
        if behaviour == "stall":
            await asyncio.sleep(3600)
        if behaviour == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if behaviour == "fail":
            return web.Response(status=500, text="<html>Internal Server Error</html>", content_type="text/html")
        if behaviour in ("busy", "rate"):
            return web.json_response(
                {"error": "unavailable" if behaviour == "busy" else "rate_limited", "detail": "try later"},
                status=503 if behaviour == "busy" else 429,
                headers={"Retry-After": self.retry_after},
            )
        if behaviour == "too_large":
            return web.Response(status=413, text="<html>413 Request Entity Too Large</html>", content_type="text/html")
        if behaviour == "reject":
            return web.json_response({"error": "malformed", "detail": "payload is not an OXP batch"}, status=400)
        if behaviour == "garbage":
            return web.Response(status=200, body=b"\x00\xffnot json")
        try:
            header = peek_header(data)
            batch = open_batch(data, self.keys[header.key_id])
        except ProtocolError as exc:
            code = "bad_signature" if exc.reason == "bad_signature" else "malformed"
            return web.json_response({"error": code, "detail": str(exc)}, status=401 if code == "bad_signature" else 400)
        except KeyError:
            return web.json_response({"error": "unknown_device", "detail": "key not enrolled"}, status=403)
        identity = header.identity
        self.posts[identity] += 1
        status = "duplicate" if identity in self.batches else "stored"
        self.batches.setdefault(identity, batch)
        if behaviour == "store_then_garbage":
            return web.Response(status=200, body=b"<html>proxy error</html>")
        ack = {
            "device_id": header.device_id,
            "key_id": header.key_id.hex(),
            "boot_epoch": header.boot_epoch,
            "seq": header.seq + (1 if behaviour == "wrong_ack" else 0),
            "status": status,
        }
        return web.json_response(ack)

    async def _status(self, request: web.Request) -> web.Response:
        data = await request.read()
        for public_key in self.keys.values():
            try:
                report = open_status(data, public_key)
            except ProtocolError:
                continue
            self.status_reports.append(report)
            return web.json_response({"ok": True, "desired": None, "etag": "e0"})
        return web.json_response({"error": "bad_signature", "detail": "no known key verifies it"}, status=401)
