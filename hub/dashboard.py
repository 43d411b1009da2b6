"""The dashboard: public home and transparency register, admin fleet table, device pages and audit log (server-rendered),
and the admin JSON API.  Every admin route asks hub.auth for the permission it needs (hub/accounts.py) and answers 403
with the reason when the account's roles do not give it."""

from __future__ import annotations

import json
import re
import time
import unicodedata
from typing import Any

import jinja2
from aiohttp import web

from edge.protocol.hubtrust import CA, NEXT_KEY
from hub.accounts import Account, AccountError, NotPermitted, Permission, role_text
from hub.audit import csv_lines, entry_json
from hub.auth import Principal, add_account, disable, set_roles, stored_account
from hub.budget import QueryBudget
from hub.charts import line_chart
from hub.fleet import TRUST_KEY, DesiredError, check_desired, desired_document, desired_status, drift
from hub.hubkey import trust_document
from hub.jsonbody import BodyError, read_json
from hub.models import Device
from hub.params import ParamError, flag, number, whole
from hub.publicreads import Refused, public_read
from hub.register import register_entry
from hub.releases import RELEASES
from hub.render import clock
from hub.retention import last_run
from hub.rollout import (
    RolloutError,
    halt_rollout,
    parse_max_failures,
    parse_ring,
    parse_stages,
    parse_wait,
    resume_rollout,
    rollout_progress,
    stage_label,
    start_rollout,
)
from hub.state import HUB, Hub
from hub.store import SOFTWARE_SCOPE, Rollout, SoftwareUpdate
from hub.tokens import MAX_TOKEN_DAYS, MAX_TOKEN_USES, create_token

__all__ = ["device_health", "routes", "sensor_health"]

routes = web.RouteTableDef()

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("hub", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

CHART_POINTS = 500
CHART_CHANNELS = 16
MAX_ADMIN_BODY = 64 * 1024  # an admin API body: a desired document or a token request
MAX_ADMIN_TEXT = 200  # a token's fleet name or note
REGISTER_MAX = 1000  # gateways the public register (/transparency and its JSON) lists, each by its latest notice


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ago(ts_ms: int | None, now: int) -> str:
    """'42 s ago', '5 min ago', '3 h ago', '2 d ago' or 'never'."""
    if ts_ms is None:
        return "never"
    seconds = max(0, (now - ts_ms) // 1000)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def span(ms: int) -> str:
    """A duration as a person says it: '45 s', '15 min', '2 h'."""
    seconds = ms // 1000
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def utc(ts_ms: int | None) -> str:
    """'2026-11-27 03:00:05 UTC' for any millisecond count (hub.render.clock), '—' for none."""
    return "—" if ts_ms is None else clock(ts_ms)


def size(n: int | None) -> str:
    if n is None:
        return "—"
    scaled = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if scaled < 1000 or unit == "GB":
            return f"{scaled:.0f} {unit}" if unit == "B" else f"{scaled:.1f} {unit}"
        scaled /= 1000
    return str(scaled)


_templates.filters.update(ago=ago, utc=utc, size=size)


# A gateway names each of its sensors that is not ok in its status report's errors as
# "<sensor> failing: <cause>: <next step>" or "<sensor> degraded: ..." (the gateway's health model,
# drivers/health.py; the report's device_health carries the same per sensor).
_SENSOR_FAULT = re.compile(r"^(\S+) (failing|degraded): ")


def sensor_health(device: Device) -> dict[str, int]:
    """How many of a gateway's sensors its last status report calls failing and degraded."""
    counts = {"failing": 0, "degraded": 0}
    for error in device.errors:
        match = _SENSOR_FAULT.match(error)
        if match:
            counts[match.group(2)] += 1
    return counts


def device_health(device: Device, *, now: int, stale_after_ms: int) -> str:
    """One word a person can scan for: revoked, pending, silent (never seen), stale, degraded (errors or loss) or ok.

    A gateway with a failing or degraded sensor reports it among its errors, so the gateway shows
    degraded: it still works, and the sensor's own word and diagnosis are in the errors column.
    """
    if device.status in ("revoked", "pending"):
        return device.status
    if device.last_seen_ms is None:
        return "silent"
    if now - device.last_seen_ms > stale_after_ms:
        return "stale"
    if device.errors:
        return "degraded"
    return "ok"


SIGNED_IN = web.RequestKey("signed_in", Principal)  # the principal allowed() let in
AUDIT_PAGE = 50  # entries per page of /audit
MAX_AUDIT_EXPORT = 1000  # entries per page of /admin/api/audit (?before=ID for the next)


async def allowed(request: web.Request, permission: Permission = Permission.READ) -> Principal:
    """The principal of an admin request that may do what ``permission`` covers; else 401/redirect (hub.auth) or 403 with the reason."""
    try:
        principal = await request.app[HUB].admin.require(request, permission)
    except NotPermitted as exc:
        raise forbidden(request, exc) from None
    request[SIGNED_IN] = principal  # the page header says who is signed in
    return principal


def forbidden(request: web.Request, exc: NotPermitted) -> web.HTTPForbidden:
    """403 for a change the account's roles do not allow: a page for a browser, JSON for a script."""
    if "text/html" in request.headers.get("Accept", ""):
        html = _templates.get_template("message.html").render(path=request.path, signed_in=None, title="Not allowed", message=str(exc))
        return web.HTTPForbidden(text=html, content_type="text/html")
    return web.HTTPForbidden(text=json.dumps({"error": "forbidden", "detail": str(exc), "needs": list(exc.permission.granted_by)}),
                             content_type="application/json")


def render(request: web.Request, name: str, *, status: int = 200, **context: Any) -> web.Response:
    html = _templates.get_template(name).render(path=request.path, signed_in=request.get(SIGNED_IN), **context)
    return web.Response(text=html, content_type="text/html", status=status, headers={"Cache-Control": "no-store"})


# --- public pages ---------------------------------------------------------------------


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    devices = await hub.store.devices()
    return render(request, "home.html", devices=len([d for d in devices if d.status == "active"]), retention=await last_run(hub.store))


# The register is public and each answer can be large (a gateway's notice is up to 128 KiB as JSON): it takes its turn
# among the public reads, a few at a time per client address, as the open data and SensorThings do (hub.publicreads).
register_turn = public_read(Refused.json_response, narrow="ask for the register again later")


@routes.get("/transparency")
@register_turn
async def transparency(request: web.Request, budget: QueryBudget) -> web.Response:
    # Each gateway's current notice, however many one of them has sent (a device's many would push the others out of the
    # newest 200). A notice stored before the hub checked notices may not fit the schema the page is written for: it is
    # named as unreadable rather than shown in part, or an older one shown as current.
    latest = await request.app[HUB].store.notices(latest=True, limit=REGISTER_MAX)
    entries = [register_entry(n) for n in sorted(latest, key=lambda n: n.device_id)]
    return render(request, "transparency.html", notices=entries)


@routes.get("/transparency.json")
@register_turn
async def transparency_json(request: web.Request, budget: QueryBudget) -> web.Response:
    notices = await request.app[HUB].store.notices(latest=True, limit=REGISTER_MAX)  # each gateway's latest, as the page
    return web.json_response(
        {"notices": [{"id": n.id, "device_id": n.device_id, "received_ms": n.received_ms, "notice": n.notice} for n in notices]}
    )


# --- login ----------------------------------------------------------------------------


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", next=_safe_next(request.query.get("next", "/fleet")), error="")


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    form = await request.post()
    target = _safe_next(str(form.get("next", "/fleet")))
    principal = await hub.admin.by_token(str(form.get("token", "")).strip(), credential="session")
    if principal is None:
        return render(request, "login.html", next=target, error="That is not the admin token of this hub, nor the API token of an enabled account.",
                      status=401)
    response = web.HTTPSeeOther(target)
    await hub.admin.start_session(response, secure=request.secure, account=principal.name)
    raise response


@routes.get("/login/{code}")
async def login_link(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    account = await hub.admin.use_login_link(request.match_info["code"])
    if account is None:
        return render(request, "login.html", next="/fleet", error="That login link was used already or has expired.", status=401)
    response = web.HTTPSeeOther(_safe_next(request.query.get("next", "/fleet")))
    await hub.admin.start_session(response, secure=request.secure, account=account)
    raise response


def _safe_next(target: str) -> str:
    # Only local paths: a login form must not become an open redirect.
    return target if target.startswith("/") and not target.startswith("//") else "/fleet"


# --- admin pages ----------------------------------------------------------------------


async def fleet_rows(hub: Hub) -> list[dict[str, Any]]:
    now = now_ms()
    rows = []
    known: dict[tuple[str, str], Any] = {}
    refused = hub.faults.failing()
    known.update(await hub.store.desired_documents())
    updates = await hub.store.software_updates()
    for device in await hub.store.devices():
        for key in (("fleet", device.fleet), ("device", device.device_id), (SOFTWARE_SCOPE, device.device_id), TRUST_KEY):
            known.setdefault(key, None)  # every document was read above: none set means none, not another read
        document, _ = await desired_document(hub.store, device, known=known)
        update = updates.get(device.device_id)
        rows.append({"d": device, "health": device_health(device, now=now, stale_after_ms=hub.stale_after_ms), "drift": drift(device, document),
                     "desired": desired_status(device, document), "target": (document or {}).get("software", {}).get("version", ""),
                     "sw_update": update, "now": now, "refused": refused.get(device.device_id)})
    return rows


@routes.get("/fleet")
async def fleet(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await allowed(request)
    rows = await fleet_rows(hub)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["health"]] = counts.get(row["health"], 0) + 1
    sensors = [sensor_health(r["d"]) for r in rows]
    totals = {
        "devices": len(rows),
        "sensors_failing": sum(c["failing"] for c in sensors),
        "sensors_degraded": sum(c["degraded"] for c in sensors),
        "readings": sum(r["d"].readings_stored for r in rows),
        "dropped": sum(r["d"].readings_dropped for r in rows),
        "duplicates": sum(r["d"].duplicates for r in rows),
    }
    trust = await trust_document(hub.store)  # a hub key or CA change under way (hub.hubkey): how far the gateways are
    changing = {"next_key": bool(trust.get(NEXT_KEY)), "ca": bool(trust.get(CA)),
                "applied": sum(1 for r in rows if r["d"].status == "active" and r["desired"][0] == "applied"),
                "active": sum(1 for r in rows if r["d"].status == "active")}
    return render(request, "fleet.html", rows=rows, counts=counts, totals=totals, stale_after=span(hub.stale_after_ms), trust=changing)


@routes.get("/fleet/devices/{device_id}")
async def device_page(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await allowed(request)
    device = await hub.store.device(request.match_info["device_id"])
    if device is None:
        message = f"No device {request.match_info['device_id']!r} is enrolled at this hub."
        return render(request, "message.html", title="No such device", message=message, status=404)
    document, etag = await desired_document(hub.store, device)
    charts = []
    personal = []
    for channel in (await hub.store.channels(device_id=device.device_id, include_personal=True))[:CHART_CHANNELS]:
        if channel.personal:
            # City IT sees that the hub keeps it and how much, never its values: the notice states its legal basis,
            # and a browser session is not where a lawful request for those values should be answered.
            count = await hub.store.count_readings(channel_id=channel.id, include_personal=True)
            personal.append({"channel": channel, "count": count})
            continue
        if channel.kind == "string":
            continue
        recent = await hub.store.readings(channel_id=channel.id, descending=True, limit=CHART_POINTS)
        points = [(r.ts_ms, r.value) for r in reversed(recent)]
        latest = recent[0] if recent else None
        charts.append({"channel": channel, "svg": line_chart(points, title=channel.channel, unit=channel.unit), "latest": latest, "count": len(recent)})
    notices = await hub.store.notices(device_id=device.device_id, limit=1)
    own = await hub.store.desired("device", device.device_id)
    update = (await hub.store.software_updates()).get(device.device_id)
    return render(
        request,
        "device.html",
        d=device,
        now=now_ms(),
        health=device_health(device, now=now_ms(), stale_after_ms=hub.stale_after_ms),
        drift=drift(device, document),
        desired_state=desired_status(device, document),
        desired=json.dumps(document, indent=2, sort_keys=True) if document else "",
        own_desired=json.dumps(own[0], indent=2, sort_keys=True) if own else "",
        etag=etag,
        refused=hub.faults.failing().get(device.device_id),
        quarantined=await hub.store.quarantined(device.device_id),
        charts=charts,
        personal=personal,
        notice=notices[0] if notices else None,
        may_operate=principal.may(Permission.OPERATE),
        target=(document or {}).get("software", {}).get("version", ""),
        update=update,
    )


@routes.post("/fleet/devices/{device_id}/{action:approve|revoke}")
async def device_action(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await allowed(request, Permission.OPERATE)
    device_id = request.match_info["device_id"]
    status = "active" if request.match_info["action"] == "approve" else "revoked"
    await hub.store.set_device_status(device_id, status, now_ms=now_ms(), actor=principal.name)
    hub.keys.forget()
    raise web.HTTPSeeOther(f"/fleet/devices/{device_id}")


@routes.get("/fleet/tokens")
async def token_page(request: web.Request) -> web.Response:
    """Each enrolment token (never the token itself) and the gateways it enrolled, with their site and status."""
    hub = request.app[HUB]
    await allowed(request)
    devices = {d.device_id: d for d in await hub.store.devices()}
    enrolled = await hub.store.token_devices()
    now = now_ms()
    tokens = [
        {"t": t, "expired": t.expires_ms <= now, "devices": [devices[i] for i in enrolled.get(t.token_id, []) if i in devices]}
        for t in reversed(await hub.store.tokens())
    ]
    return render(request, "tokens.html", tokens=tokens, now=now)


# --- admin JSON API (for scripts; the CLI works on the database directly) ---------------


def _device_json(device: Device, health: str, drifts: list[str], refused: str | None) -> dict[str, Any]:
    return {
        "device_id": device.device_id, "status": device.status, "health": health, "fleet": device.fleet, "key_id": device.key_id.hex(),
        "last_seen_ms": device.last_seen_ms, "software_version": device.software_version, "boot_epoch": device.boot_epoch,
        "last_seq": device.last_seq, "unclean_stops": device.unclean_stops, "readings_dropped": device.readings_dropped,
        "spool_batches": device.spool_batches, "spool_bytes": device.spool_bytes, "policy_digest": device.policy_digest,
        "config_digest": device.config_digest, "applied_etag": device.applied_etag, "errors": list(device.errors),
        "readings_stored": device.readings_stored, "batches_stored": device.batches_stored, "duplicates": device.duplicates,
        "drift": drifts, "refused": refused, "sensors": sensor_health(device), "ring": device.ring,
    }


@routes.put("/admin/api/devices/{device_id}/ring")
async def api_set_ring(request: web.Request) -> web.Response:
    """{"ring": "canary"} puts a device in a rollout ring ("" in none); operator; audited as ``device.ring`` (docs/updates.md)."""
    hub = request.app[HUB]
    principal = await allowed(request, Permission.OPERATE)
    device_id = request.match_info["device_id"]
    try:
        body = await read_json(request, limit=MAX_ADMIN_BODY, what="ring")
        ring = body.get("ring") if isinstance(body, dict) and set(body) == {"ring"} else None
        if not isinstance(ring, str):
            raise RolloutError(f"ring: expected {{\"ring\": \"NAME\"}} (\"\" for none), got {str(body)[:80]}")
        parse_ring(ring)
    except BodyError as exc:
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except RolloutError as exc:
        return web.json_response({"error": "refused", "detail": str(exc)}, status=400)
    if not await hub.store.set_device_ring(device_id, ring, now_ms=now_ms(), actor=principal.name):
        return web.json_response({"error": "not_found", "detail": f"no device {device_id[:80]!r} at this hub"}, status=404)
    return web.json_response({"ok": True, "device_id": device_id, "ring": ring})


@routes.get("/admin/api/devices")
async def api_devices(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await allowed(request)
    rows = await fleet_rows(hub)
    return web.json_response({"devices": [dict(_device_json(r["d"], r["health"], r["drift"], r["refused"]),
                                               desired={"state": r["desired"][0], "error": r["desired"][1]},
                                               software={"running": r["d"].software_version, "target": r["target"],
                                                         "update": _update_json(r["sw_update"])}) for r in rows]})


def _update_json(update: SoftwareUpdate | None) -> dict[str, Any] | None:
    if update is None:
        return None
    return {"state": update.state, "version": update.version, "reason": update.reason, "running": update.running, "changed_ms": update.changed_ms}


# --- software rollouts (hub.rollout) --------------------------------------------------------


def _rollout_json(rollout: Rollout, progress: dict[str, int]) -> dict[str, Any]:
    return {"id": rollout.id, "version": rollout.version, "fleet": rollout.fleet, "state": rollout.state, "stage": rollout.stage + 1,
            "stages": [stage_label(s) for s in rollout.stages], "wait_s": rollout.wait_ms // 1000, "max_failures": f"{rollout.max_failure * 100:g}%",
            "url": rollout.url, "key_id": rollout.key_id, "reason": rollout.reason, "stage_started_ms": rollout.stage_started_ms,
            "created_ms": rollout.created_ms, "updated_ms": rollout.updated_ms, "pause_backlog": rollout.pause_backlog, "progress": progress}


async def _rollouts_with_progress(hub: Hub) -> list[tuple[Rollout, dict[str, int]]]:
    devices = await hub.store.devices()
    updates = await hub.store.software_updates()
    return [(r, rollout_progress(r, devices, updates)) for r in await hub.store.rollouts()]


@routes.get("/fleet/rollouts")
async def rollouts_page(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await allowed(request)
    return render(request, "rollouts.html", rollouts=await _rollouts_with_progress(hub), now=now_ms(), may_operate=principal.may(Permission.OPERATE))


@routes.post("/fleet/rollouts/{rollout_id:[0-9]{1,12}}/{action:halt|resume}")
async def rollout_action(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await allowed(request, Permission.OPERATE)
    try:
        await _change_rollout(hub, int(request.match_info["rollout_id"]), request.match_info["action"], principal.name)
    except RolloutError as exc:
        return render(request, "message.html", title="Rollout not changed", message=str(exc), status=409)
    raise web.HTTPSeeOther("/fleet/rollouts")


async def _change_rollout(hub: Hub, rollout_id: int, action: str, actor: str, reason: str = "") -> Rollout:
    if action == "halt":
        return await halt_rollout(hub.store, rollout_id, actor=actor, reason=reason)
    return await resume_rollout(hub.store, rollout_id, actor=actor)


@routes.get("/admin/api/rollouts")
async def api_rollouts(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await allowed(request)
    return web.json_response({"rollouts": [_rollout_json(r, p) for r, p in await _rollouts_with_progress(hub)]})


@routes.post("/admin/api/rollouts")
async def api_start_rollout(request: web.Request) -> web.Response:
    """{"version", "fleet", "stages": "5%,25%,100%", "wait": "1h", "max_failures": "10%", "url"?}: start a rollout (operator)."""
    hub = request.app[HUB]
    principal = await allowed(request, Permission.OPERATE)
    try:
        body = await read_json(request, limit=MAX_ADMIN_BODY, what="rollout")
        if not isinstance(body, dict):
            raise RolloutError("rollout: expected a JSON object with version, fleet, stages, wait and max_failures")
        unknown = sorted(set(body) - {"version", "fleet", "stages", "wait", "max_failures", "url", "pause_backlog"})
        if unknown:
            raise RolloutError(f"rollout: unknown field(s) {', '.join(map(repr, unknown))}")
        fields = {}
        for name, default in (("version", None), ("fleet", None), ("stages", "100%"), ("wait", "1h"), ("max_failures", "10%"), ("url", "")):
            value = body.get(name, default)
            if not isinstance(value, str) or value == "" and default is None or len(value) > MAX_ADMIN_TEXT:
                raise RolloutError(f"rollout field {name!r} = {value!r}: expected a string" + (" (required)" if default is None else ""))
            fields[name] = value
        pause_backlog = body.get("pause_backlog", 0)
        if type(pause_backlog) is not int or pause_backlog < 0:
            raise RolloutError(f"rollout field 'pause_backlog' = {pause_backlog!r}: expected a whole number of batches (0: never pause)")
        releases = request.app.get(RELEASES)
        if releases is None:
            raise RolloutError("this hub keeps no releases (it runs without a state directory)")
        rollout = await start_rollout(hub.store, releases, version=fields["version"], fleet=fields["fleet"], stages=parse_stages(fields["stages"]),
                                      wait_ms=parse_wait(fields["wait"]), max_failure=parse_max_failures(fields["max_failures"]),
                                      url=fields["url"] or None, pause_backlog=pause_backlog, actor=principal.name)
    except BodyError as exc:
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except RolloutError as exc:
        return web.json_response({"error": "refused", "detail": str(exc)}, status=400)
    return web.json_response({"ok": True, "id": rollout.id}, status=201)


@routes.post("/admin/api/rollouts/{rollout_id:[0-9]{1,12}}/{action:halt|resume}")
async def api_rollout_action(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await allowed(request, Permission.OPERATE)
    try:
        rollout = await _change_rollout(hub, int(request.match_info["rollout_id"]), request.match_info["action"], principal.name)
    except RolloutError as exc:
        return web.json_response({"error": "refused", "detail": str(exc)}, status=409)
    return web.json_response({"ok": True, "state": rollout.state})


@routes.put("/admin/api/desired/{scope:fleet|device}/{name}")
async def api_set_desired(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await _may_change_desired(request)
    try:
        name = _text("name", request.match_info["name"], default="")
        document = check_desired(await read_json(request, limit=MAX_ADMIN_BODY, what="desired document"))
    except BodyError as exc:
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except (DesiredError, ParamError) as exc:
        return web.json_response({"error": "malformed", "detail": str(exc)}, status=400)
    try:
        await hub.store.set_desired(request.match_info["scope"], name, document, now_ms=now_ms(), actor=principal.name,
                                    may_change=principal.parts_it_may_change())
    except NotPermitted as exc:
        raise forbidden(request, exc) from None
    return web.json_response({"ok": True})


async def _may_change_desired(request: web.Request) -> Principal:
    """The principal of a desired-document change, if its roles let it change some part (config or policy); which parts the
    change touches is decided by the store against the document it replaces (Store.set_desired's ``may_change``)."""
    principal = await allowed(request)
    if not principal.parts_it_may_change():
        raise forbidden(request, NotPermitted(Permission.OPERATE, f"{principal.name} may not change desired documents "
                                              f"(a policy change needs the role {' or '.join(Permission.POLICY.granted_by)})"))
    return principal


@routes.delete("/admin/api/desired/{scope:fleet|device}/{name}")
async def api_clear_desired(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await _may_change_desired(request)
    try:
        name = _text("name", request.match_info["name"], default="")
    except ParamError as exc:
        return web.json_response({"error": "malformed", "detail": str(exc)}, status=400)
    try:
        await hub.store.set_desired(request.match_info["scope"], name, None, now_ms=now_ms(), actor=principal.name,
                                    may_change=principal.parts_it_may_change())
    except NotPermitted as exc:
        raise forbidden(request, exc) from None
    return web.json_response({"ok": True})


@routes.post("/admin/api/tokens")
async def api_create_token(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    principal = await allowed(request, Permission.OPERATE)
    try:
        body = await read_json(request, limit=MAX_ADMIN_BODY, what="token request")
        if not isinstance(body, dict):
            raise ParamError(f"token request {type(body).__name__}: expected a JSON object like {{\"uses\": 1, \"expires_s\": 86400}}")
        token = await create_token(
            hub.store, uses=whole("uses", body.get("uses"), low=1, high=MAX_TOKEN_USES, default=1),
            expires_s=number("expires_s", body.get("expires_s"), low=1, high=MAX_TOKEN_DAYS * 86400, default=7 * 86400),
            approve=flag("approve", body.get("approve"), default=False), fleet=_text("fleet", body.get("fleet"), default="default"),
            note=_text("note", body.get("note"), default="", empty=True), actor=principal.name,
        )
    except BodyError as exc:
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except ParamError as exc:
        return web.json_response({"error": "malformed", "detail": str(exc)}, status=400)
    return web.json_response({"token": token}, status=201)


# --- accounts (the admin role) -------------------------------------------------------------


def _account_json(account: Account) -> dict[str, Any]:
    return {"name": account.name, "roles": role_text(account.roles).split(","), "disabled": account.disabled,
            "created_ms": account.created_ms, "updated_ms": account.updated_ms}


@routes.get("/admin/api/accounts")
async def api_accounts(request: web.Request) -> web.Response:
    """Every account with its roles (never a token)."""
    await allowed(request, Permission.ACCOUNTS)
    return web.json_response({"accounts": [_account_json(a) for a in await request.app[HUB].store.accounts()]})


@routes.post("/admin/api/accounts")
async def api_add_account(request: web.Request) -> web.Response:
    """Create an account from ``{"name": ..., "roles": "operator,privacy-officer"}``; the answer holds its API token, the only time it is shown."""
    hub = request.app[HUB]
    principal = await allowed(request, Permission.ACCOUNTS)
    try:
        body = await read_json(request, limit=MAX_ADMIN_BODY, what="account request")
        if not isinstance(body, dict):
            raise ParamError(f"account request {type(body).__name__}: expected a JSON object like {{\"name\": \"olga\", \"roles\": \"operator\"}}")
        name = _text("name", body.get("name"), default="")
        token = await add_account(hub.store, name, _text("roles", body.get("roles"), default=""), actor=principal.name)
        account = await stored_account(hub.store, name)
    except BodyError as exc:
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except (AccountError, ParamError) as exc:
        return web.json_response({"error": "malformed", "detail": str(exc)}, status=400)
    return web.json_response({"account": _account_json(account), "token": token}, status=201)


@routes.put("/admin/api/accounts/{name}")
async def api_set_roles(request: web.Request) -> web.Response:
    """Give an account new roles from ``{"roles": "viewer"}``; in force at its next request."""
    hub = request.app[HUB]
    principal = await allowed(request, Permission.ACCOUNTS)
    try:
        body = await read_json(request, limit=MAX_ADMIN_BODY, what="roles request")
        if not isinstance(body, dict):
            raise ParamError(f"roles request {type(body).__name__}: expected a JSON object like {{\"roles\": \"viewer\"}}")
        account = await set_roles(hub.store, request.match_info["name"], _text("roles", body.get("roles"), default=""), actor=principal.name)
    except BodyError as exc:
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except (AccountError, ParamError) as exc:
        return web.json_response({"error": "malformed", "detail": str(exc)}, status=400)
    return web.json_response({"account": _account_json(account)})


@routes.delete("/admin/api/accounts/{name}")
async def api_disable_account(request: web.Request) -> web.Response:
    """Disable an account: its token, sessions and login links stop working at once (the account and its audit entries stay)."""
    hub = request.app[HUB]
    principal = await allowed(request, Permission.ACCOUNTS)
    try:
        await disable(hub.store, request.match_info["name"], actor=principal.name)
    except AccountError as exc:
        return web.json_response({"error": "not_found", "detail": str(exc)}, status=404)
    return web.json_response({"ok": True})


# --- the audit log ----------------------------------------------------------------------


def _before(request: web.Request) -> int | None:
    """The ``before`` query parameter: entries older than this id (the next page), or None for the newest."""
    text = request.query.get("before")
    return None if text is None else whole("before", text, low=1, high=2**63 - 1, default=None)


@routes.get("/audit")
async def audit_page(request: web.Request) -> web.Response:
    """The audit log, newest first, a page at a time (``?before=ID`` for older entries)."""
    hub = request.app[HUB]
    await allowed(request)
    try:
        before = _before(request)
    except ParamError as exc:
        return render(request, "message.html", title="Not a page of the audit log", message=str(exc), status=400)
    entries = await hub.store.audit_log(limit=AUDIT_PAGE + 1, before_id=before)
    older = entries[AUDIT_PAGE - 1].id if len(entries) > AUDIT_PAGE else None
    return render(request, "audit.html", entries=entries[:AUDIT_PAGE], older=older, newest=before is None, total=await hub.store.audit_count())


@routes.get("/admin/api/audit")
async def api_audit(request: web.Request) -> web.StreamResponse:
    """The audit log for export, newest first: ``?format=json`` (default) or ``csv``; ``limit`` (at most 1000) and ``before=ID`` page through it."""
    hub = request.app[HUB]
    await allowed(request)
    try:
        form = request.query.get("format", "json")
        if form not in ("json", "csv"):
            raise ParamError(f"format={form[:20]!r}: expected json or csv")
        limit = whole("limit", request.query.get("limit"), low=1, high=MAX_AUDIT_EXPORT, default=MAX_AUDIT_EXPORT)
        before = _before(request)
    except ParamError as exc:
        return web.json_response({"error": "malformed", "detail": str(exc)}, status=400)
    entries = await hub.store.audit_log(limit=limit, before_id=before)
    headers = {"Cache-Control": "no-store"}
    if len(entries) == limit:
        headers["Link"] = f'</admin/api/audit?format={form}&limit={limit}&before={entries[-1].id}>; rel="next"'
    if form == "csv":
        headers["Content-Disposition"] = 'attachment; filename="ocn-hub-audit.csv"'
        return web.Response(text="".join(csv_lines(entries)), content_type="text/csv", headers=headers)
    return web.json_response({"entries": [entry_json(e) for e in entries]}, headers=headers)


def _text(name: str, value: object, *, default: str, empty: bool = False) -> str:
    """One line of text an admin gave: no control characters (PostgreSQL refuses U+0000 in text), at most MAX_ADMIN_TEXT."""
    if value is None:
        return default
    if (not isinstance(value, str) or len(value) > MAX_ADMIN_TEXT or (value == "" and not empty)
            or any(unicodedata.category(c) == "Cc" for c in value)):
        raise ParamError(f"{name}={str(value)[:40]!r}: expected {'' if empty else 'non-empty '}text of at most {MAX_ADMIN_TEXT} "
                         "characters on one line, without control characters")
    return value
