"""A read-only OGC SensorThings API v1.1 view of the hub's data, so existing SensorThings clients can read it.

Mapping: a gateway is a Thing (its pole position its Location); each channel a Datastream;
each gateway's device (the channel id prefix, e.g. ``pm-1``) a Sensor; the channel name
(``pm2_5``) an ObservedProperty; each stored reading an Observation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from hub.sta_filter import FilterError, compile_filter
from hub.state import HUB
from hub.store import Device, Store, StoredChannel, StoredReading

__all__ = ["routes"]

routes = web.RouteTableDef()

PREFIX = "/sta/v1.1"
SETS = ("Things", "Locations", "Datastreams", "Sensors", "ObservedProperties", "Observations")
DEFAULT_TOP = 100
MAX_TOP = 10_000
SEGMENT = re.compile(r"(?P<name>[A-Za-z]+)(?:\((?P<id>'(?:[^']|'')*'|\d+)\))?")
OBSERVATION_TYPES = {
    "number": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
    "bool": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_TruthObservation",
    "string": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CategoryObservation",
}
# Which navigation property of which entity type leads where, and whether it is one entity or a set.
NAVIGATION = {
    "Things": {"Datastreams": ("Datastreams", True), "Locations": ("Locations", True)},
    "Locations": {"Things": ("Things", True)},
    "Datastreams": {"Thing": ("Things", False), "Sensor": ("Sensors", False), "ObservedProperty": ("ObservedProperties", False), "Observations": ("Observations", True)},
    "Sensors": {"Datastreams": ("Datastreams", True)},
    "ObservedProperties": {"Datastreams": ("Datastreams", True)},
    "Observations": {"Datastream": ("Datastreams", False)},
}


class StaError(Exception):
    """A request outside what this API serves: HTTP status and a sentence saying what is accepted."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key_text(key: Any) -> str:
    return str(key) if isinstance(key, int) else "'" + str(key).replace("'", "''") + "'"


def sensor_parts(channel: StoredChannel) -> tuple[str, str]:
    """(sensor name, observed property name) of a channel id ``<device>/<name>``."""
    device, _, name = channel.channel.partition("/")
    return device, name or device


class Options:
    """The query options of one collection: $top, $skip, $orderby, $filter, $expand, $count."""

    def __init__(self, raw: dict[str, str]) -> None:
        self.raw = raw
        self.top = self._int("$top", DEFAULT_TOP, MAX_TOP)
        self.skip = self._int("$skip", 0, 2**62)
        self.count = raw.get("$count", "false").lower() == "true"
        self.filter = raw.get("$filter")
        self.orderby = raw.get("$orderby", "")
        self.expand = split_top_level(raw.get("$expand", ""), ",")

    def _int(self, name: str, default: int, high: int) -> int:
        text = self.raw.get(name)
        if text is None:
            return default
        if not text.isdigit() or int(text) > high:
            raise StaError(400, f"{name}={text!r}: expected a whole number from 0 to {high}")
        return int(text)


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses and quotes (``$expand=A($top=1;$orderby=x),B``)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_expand_item(item: str) -> tuple[list[str], dict[str, str]]:
    """``Datastreams/Observations($top=3;$orderby=phenomenonTime desc)`` → (path, options of the last step)."""
    options: dict[str, str] = {}
    if "(" in item and item.endswith(")"):
        head, _, inner = item.partition("(")
        for part in split_top_level(inner[:-1], ";"):
            name, eq, value = part.partition("=")
            if not eq:
                raise StaError(400, f"$expand={item!r}: options in parentheses look like $top=5;$orderby=phenomenonTime desc")
            options[name.strip()] = value.strip()
        item = head
    return [step for step in item.split("/") if step], options


class Catalog:
    """One request's view of the entities (small sets in memory; observations straight from the store)."""

    def __init__(self, store: Store, base: str, devices: list[Device], channels: list[StoredChannel]) -> None:
        self.store = store
        self.base = base
        self.devices = {d.device_id: d for d in devices if d.status != "pending"}
        self.channels = [c for c in channels if c.device_id in self.devices]
        self.channel_by_id = {c.id: c for c in self.channels}

    @classmethod
    async def load(cls, store: Store, base: str) -> Catalog:
        return cls(store, base, await store.devices(), await store.channels())

    # --- entity sets as (key, object) lists -------------------------------------------

    def members(self, entity_set: str) -> list[tuple[Any, Any]]:
        if entity_set == "Things":
            return [(d.device_id, d) for d in self.devices.values()]
        if entity_set == "Locations":
            return [(d.device_id, d) for d in self.devices.values() if d.latitude is not None]
        if entity_set == "Datastreams":
            return [(c.id, c) for c in self.channels]
        if entity_set == "Sensors":
            seen: dict[str, tuple[str, str]] = {}
            for c in self.channels:
                sensor = sensor_parts(c)[0]
                seen.setdefault(f"{c.device_id}:{sensor}", (c.device_id, sensor))
            return list(seen.items())
        if entity_set == "ObservedProperties":
            names = sorted({sensor_parts(c)[1] for c in self.channels})
            return [(n, n) for n in names]
        raise StaError(404, f"{entity_set!r} is not an entity set here; expected one of {', '.join(SETS)}")

    async def one(self, entity_set: str, key: Any) -> Any:
        if entity_set == "Observations":
            rows = await self.store.readings(reading_id=int(key), limit=1)
            if not rows or rows[0].channel_id not in self.channel_by_id:
                raise StaError(404, f"Observations({key}) does not exist")
            return rows[0]
        for k, obj in self.members(entity_set):
            if k == key:
                return obj
        raise StaError(404, f"{entity_set}({key_text(key)}) does not exist")

    def related(self, entity_set: str, obj: Any, nav: str) -> tuple[str, list[tuple[Any, Any]] | None]:
        """The target set and members of a navigation (None for Observations, which come from the store)."""
        target, _ = NAVIGATION[entity_set][nav]
        if target == "Observations":
            return target, None
        if entity_set == "Things" and nav == "Datastreams":
            return target, [(c.id, c) for c in self.channels if c.device_id == obj.device_id]
        if entity_set == "Things" and nav == "Locations":
            return target, [(obj.device_id, obj)] if obj.latitude is not None else []
        if entity_set == "Locations":
            return target, [(obj.device_id, obj)]
        if entity_set == "Datastreams":
            device_id, sensor = obj.device_id, sensor_parts(obj)[0]
            single = {"Thing": (device_id, self.devices[device_id]), "Sensor": (f"{device_id}:{sensor}", (device_id, sensor)),
                      "ObservedProperty": (sensor_parts(obj)[1], sensor_parts(obj)[1])}[nav]
            return target, [single]
        if entity_set == "Sensors":
            return target, [(c.id, c) for c in self.channels if c.device_id == obj[0] and sensor_parts(c)[0] == obj[1]]
        if entity_set == "ObservedProperties":
            return target, [(c.id, c) for c in self.channels if sensor_parts(c)[1] == obj]
        if entity_set == "Observations":
            channel = self.channel_by_id[obj.channel_id]
            return target, [(channel.id, channel)]
        raise StaError(404, f"{entity_set} has no navigation property {nav!r}")

    # --- JSON of each entity type -----------------------------------------------------

    def link(self, entity_set: str, key: Any) -> str:
        return f"{self.base}/{entity_set}({key_text(key)})"

    def render(self, entity_set: str, key: Any, obj: Any) -> dict[str, Any]:
        self_link = self.link(entity_set, key)
        out: dict[str, Any] = {"@iot.id": key, "@iot.selfLink": self_link}
        if entity_set == "Things":
            d: Device = obj
            out.update(name=d.device_id, description=d.site or f"OCN gateway {d.device_id}",
                       properties={"fleet": d.fleet, "status": d.status, "software_version": d.software_version})
        elif entity_set == "Locations":
            out.update(name=obj.site or obj.device_id, description=f"pole of gateway {obj.device_id}", encodingType="application/geo+json",
                       location={"type": "Point", "coordinates": [obj.longitude, obj.latitude]})
        elif entity_set == "Datastreams":
            c: StoredChannel = obj
            out.update(name=f"{c.device_id}/{c.channel}", description=c.description or c.channel,
                       observationType=OBSERVATION_TYPES.get(c.kind, OBSERVATION_TYPES["number"]),
                       unitOfMeasurement={"name": c.unit, "symbol": c.unit, "definition": "https://www.rfc-editor.org/rfc/rfc8428#section-12.1" if c.unit else ""},
                       properties={"resolution": c.resolution})
        elif entity_set == "Sensors":
            device_id, sensor = obj
            out.update(name=sensor, description=f"device {sensor} on gateway {device_id}", encodingType="text/plain", metadata=f"{device_id}:{sensor}")
        elif entity_set == "ObservedProperties":
            out.update(name=obj, definition=f"urn:ocn:channel:{obj}", description=f"channel {obj}")
        elif entity_set == "Observations":
            r: StoredReading = obj
            out.update(phenomenonTime=iso(r.ts_ms), resultTime=iso(r.ts_ms), result=r.value)
            if r.quality is not None:
                out["resultQuality"] = ["good", "suspect", "bad"][r.quality] if 0 <= r.quality <= 2 else str(r.quality)
        for nav in NAVIGATION[entity_set]:
            out[f"{nav}@iot.navigationLink"] = f"{self_link}/{nav}"
        return out

    # --- collections ------------------------------------------------------------------

    async def observations(self, options: Options, *, channel_id: int | None) -> tuple[list[tuple[Any, Any]], bool]:
        match, since, until = None, None, None
        if options.filter:
            try:
                match, since, until = compile_filter(options.filter)
            except FilterError as exc:
                raise StaError(400, str(exc)) from None
        order, descending = "ts_ms", False
        if options.orderby:
            first = split_top_level(options.orderby, ",")[0].split()
            order = {"phenomenonTime": "ts_ms", "resultTime": "ts_ms", "result": "value", "@iot.id": "id", "id": "id"}.get(first[0], "")
            if not order or (len(first) > 1 and first[1].lower() not in ("asc", "desc")):
                raise StaError(400, f"$orderby={options.orderby!r}: expected phenomenonTime, resultTime, result or @iot.id, then asc or desc")
            descending = len(first) > 1 and first[1].lower() == "desc"
        try:
            rows = await self.store.readings(channel_id=channel_id, since_ms=since, until_ms=until, match=match, order=order,
                                             descending=descending, limit=options.top + 1, offset=options.skip)
        except ValueError as exc:
            raise StaError(400, f"$top/$skip: {exc}") from None
        rows = [r for r in rows if r.channel_id in self.channel_by_id]
        return [(r.id, r) for r in rows[: options.top]], len(rows) > options.top

    def page(self, members: list[tuple[Any, Any]], options: Options) -> tuple[list[tuple[Any, Any]], bool]:
        if options.filter:
            raise StaError(400, "$filter is served on Observations (phenomenonTime, resultTime, result); other sets are small, fetch them whole")
        if options.orderby:
            field, _, direction = options.orderby.partition(" ")
            if field not in ("@iot.id", "id", "name"):
                raise StaError(400, f"$orderby={options.orderby!r}: on this set expected @iot.id or name, then asc or desc")
            members = sorted(members, key=lambda m: m[0], reverse=direction.strip().lower() == "desc")
        chosen = members[options.skip : options.skip + options.top]
        return chosen, options.skip + options.top < len(members)

    async def collection(self, entity_set: str, members: list[tuple[Any, Any]] | None, options: Options, *, url: str, channel_id: int | None = None) -> dict[str, Any]:
        if members is None:
            chosen, more = await self.observations(options, channel_id=channel_id)
            total = None
        else:
            chosen, more = self.page(members, options)
            total = len(members)
        out: dict[str, Any] = {}
        if options.count and total is not None:
            out["@iot.count"] = total
        out["value"] = [await self.expanded(entity_set, key, obj, options.expand) for key, obj in chosen]
        if more:
            out["@iot.nextLink"] = next_link(url, options)
        return out

    async def expanded(self, entity_set: str, key: Any, obj: Any, expand: Sequence[str]) -> dict[str, Any]:
        entity = self.render(entity_set, key, obj)
        for item in expand:
            path, raw = parse_expand_item(item)
            if not path:
                continue
            nav, rest = path[0], path[1:]
            if nav not in NAVIGATION[entity_set]:
                raise StaError(400, f"$expand={item!r}: {entity_set} can expand {', '.join(NAVIGATION[entity_set])}")
            target, many = NAVIGATION[entity_set][nav]
            options = Options(raw if not rest else {})
            nested = ["/".join(rest) + (f"({';'.join(f'{k}={v}' for k, v in raw.items())})" if raw else "")] if rest else options.expand
            _, members = self.related(entity_set, obj, nav)
            nav_url = f"{self.link(entity_set, key)}/{nav}"
            if members is None:
                chosen, more = await self.observations(options, channel_id=obj.id)
            elif many:
                chosen, more = self.page(members, options)
            else:
                chosen, more = members, False
            values = [await self.expanded(target, k, o, nested) for k, o in chosen]
            if many:
                entity[nav] = values
                if more:
                    entity[f"{nav}@iot.nextLink"] = next_link(nav_url, options)
            else:
                entity[nav] = values[0] if values else None
        return entity


def next_link(url: str, options: Options) -> str:
    from yarl import URL

    query = dict(options.raw)
    query["$skip"] = str(options.skip + options.top)
    query["$top"] = str(options.top)
    return str(URL(url).with_query(query))


def parse_path(path: str) -> list[tuple[str, Any]]:
    """``Datastreams(5)/Observations`` → [("Datastreams", 5), ("Observations", None)]."""
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(path):
        m = SEGMENT.match(path, pos)
        if m is None:
            raise StaError(404, f"{PREFIX}/{path}: expected EntitySet, EntitySet(id) or EntitySet(id)/NavigationProperty")
        raw = m.group("id")
        key: Any = None
        if raw is not None:
            key = int(raw) if raw.isdigit() else raw[1:-1].replace("''", "'")
        steps.append((m.group("name"), key))
        pos = m.end()
        if pos < len(path):
            if path[pos] != "/":
                raise StaError(404, f"{PREFIX}/{path}: unexpected {path[pos:pos + 10]!r}")
            pos += 1
    return steps


async def resolve(catalog: Catalog, steps: list[tuple[str, Any]], options: Options, url: str) -> dict[str, Any]:
    entity_set, key = steps[0]
    if entity_set not in SETS:
        raise StaError(404, f"{entity_set!r} is not an entity set here; expected one of {', '.join(SETS)}")
    if key is None:
        if len(steps) > 1:
            raise StaError(404, f"{entity_set}: name one entity, e.g. {entity_set}(1)/...")
        members = None if entity_set == "Observations" else catalog.members(entity_set)
        return await catalog.collection(entity_set, members, options, url=url)
    obj = await catalog.one(entity_set, key)
    for position, (nav, nav_key) in enumerate(steps[1:], start=2):
        if nav not in NAVIGATION[entity_set]:
            raise StaError(404, f"{entity_set} has no navigation property {nav!r}; expected {', '.join(NAVIGATION[entity_set])}")
        target, many = NAVIGATION[entity_set][nav]
        _, members = catalog.related(entity_set, obj, nav)
        if many and nav_key is None and position == len(steps):
            return await catalog.collection(target, members, options, url=url, channel_id=obj.id if members is None else None)
        if members is None:
            obj = await catalog.one(target, nav_key)
            key = nav_key
        else:
            match = [(k, o) for k, o in members if nav_key is None or k == nav_key]
            if not match:
                raise StaError(404, f"{nav}({key_text(nav_key)}) is not related to {entity_set}({key_text(key)})")
            key, obj = match[0]
        entity_set = target
    return await catalog.expanded(entity_set, key, obj, options.expand)


@routes.get(PREFIX)
@routes.get(PREFIX + "/")
async def service_root(request: web.Request) -> web.Response:
    base = f"{request.url.origin()}{PREFIX}"
    return web.json_response(
        {
            "value": [{"name": name, "url": f"{base}/{name}"} for name in SETS],
            "serverSettings": {"conformance": ["http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel", "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities", "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data"]},
        }
    )


@routes.get(PREFIX + "/{path:.+}")
async def entity(request: web.Request) -> web.Response:
    base = f"{request.url.origin()}{PREFIX}"
    try:
        steps = parse_path(request.match_info["path"].rstrip("/"))
        options = Options(dict(request.query))
        catalog = await Catalog.load(request.app[HUB].store, base)
        body = await resolve(catalog, steps, options, f"{base}/{request.match_info['path']}")
    except StaError as exc:
        return web.json_response({"code": exc.status, "type": "error", "message": exc.detail}, status=exc.status)
    return web.json_response(body)
