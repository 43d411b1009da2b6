"""A read-only OGC SensorThings API v1.1 view of the hub's data, so existing SensorThings clients can read it.

Mapping: a gateway is a Thing (its pole position its Location); each channel a Datastream;
each gateway's device (the channel id prefix, e.g. ``pm-1``) a Sensor; the channel name
(``pm2_5``) an ObservedProperty; each stored reading an Observation.

Query options follow OGC 18-088 §9.3: ``$expand`` (nested, with options), ``$select``,
``$filter`` (hub.sta_filter), ``$orderby`` (several keys), ``$top``, ``$skip`` and
``$count`` on every entity set.  Small sets (Things, Datastreams, …) are filtered and sorted
in memory; Observations come from the store, which is given the time range and the
channel a filter implies, so a filtered query over a big store reads only those chunks.

Personal channels (OXP kind + 4) are no part of this view: the store leaves them and their
readings out of every query made here, counts and filters included.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from yarl import URL

from hub.budget import QueryBudget
from hub.models import Device, StoredChannel, StoredReading
from hub.params import ParamError, whole
from hub.publicreads import READ_STORE, Refused, public_read
from hub.render import iso_time, json_number
from hub.sta_filter import (
    FilterError,
    Getter,
    Many,
    Node,
    compile_predicate,
    compile_value,
    conjuncts,
    parse_filter,
    parse_orderby,
    paths,
    strip_prefix,
    time_range,
)
from hub.sta_filter import (
    many as flat,
)
from hub.store import Store
from hub.streamed import send_json

__all__ = ["routes"]

routes = web.RouteTableDef()

PREFIX = "/sta/v1.1"
SETS = ("Things", "Locations", "Datastreams", "Sensors", "ObservedProperties", "Observations")
DEFAULT_TOP = 100
MAX_TOP = 10_000
# Orderings of Observations beyond their first key are sorted here; the ties of the page's last value are fetched whole, up to this.
MAX_TIES = 100_000
SEGMENT = re.compile(r"(?P<name>[A-Za-z]+)(?:\((?P<id>'(?:[^']|'')*'|[0-9]+)\))?")
MAX_ID = 2**63 - 1
MAX_TIME = 2**63 - 1  # milliseconds, OXP §2
MAX_OBSERVATION_ID = 2**79 - 1
OBSERVATION_TYPES = {
    "number": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
    "bool": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_TruthObservation",
    "string": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CategoryObservation",
}
# Which navigation property of which entity type leads where, and whether it is one entity or a set.
NAVIGATION = {
    "Things": {"Datastreams": ("Datastreams", True), "Locations": ("Locations", True)},
    "Locations": {"Things": ("Things", True)},
    "Datastreams": {"Thing": ("Things", False), "Sensor": ("Sensors", False), "ObservedProperty": ("ObservedProperties", False),
                    "Observations": ("Observations", True)},
    "Sensors": {"Datastreams": ("Datastreams", True)},
    "ObservedProperties": {"Datastreams": ("Datastreams", True)},
    "Observations": {"Datastream": ("Datastreams", False)},
}
# The properties each entity type carries here and their types in $filter ("json": has sub-properties).
PROPERTIES = {
    "Things": {"name": "str", "description": "str", "properties": "json"},
    "Locations": {"name": "str", "description": "str", "encodingType": "str", "location": "json"},
    "Datastreams": {"name": "str", "description": "str", "observationType": "str", "unitOfMeasurement": "json", "properties": "json"},
    "Sensors": {"name": "str", "description": "str", "encodingType": "str", "metadata": "str"},
    "ObservedProperties": {"name": "str", "definition": "str", "description": "str"},
    "Observations": {"phenomenonTime": "time", "resultTime": "time", "result": "any", "resultQuality": "str"},
}
NUMERIC_IDS = {"Datastreams", "Observations"}
ID_NAMES = ("@iot.id", "id")
SELF_LINK_NAMES = ("@iot.selfLink", "selfLink")
TIME_PATHS = (("phenomenonTime",), ("resultTime",))
# What an Observation $orderby key sorts on in the store.
OBSERVATION_ORDER = {"phenomenonTime": "ts_ms", "resultTime": "ts_ms", "result": "value", "@iot.id": "id", "id": "id"}
QUERY_OPTIONS = ("$top", "$skip", "$count", "$filter", "$orderby", "$expand", "$select")
MAX_EXPAND_DEPTH = 6
# Entities one response may hold, expansions included: each nested $expand multiplies by its $top
# (Observations → Datastream → Observations … is 10,000**3 at the page size), so a response is capped.
MAX_ENTITIES = 50_000
# Entities rendered between two turns of the event loop (a few milliseconds).
YIELD_EVERY = 200


class StaError(Exception):
    """A request outside what this API serves: HTTP status and a sentence saying what is accepted."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def key_text(key: Any) -> str:
    return str(key) if isinstance(key, int) else "'" + str(key).replace("'", "''") + "'"


def sensor_parts(channel: StoredChannel) -> tuple[str, str]:
    """(sensor name, observed property name) of a channel id ``<device>/<name>``."""
    device, _, name = channel.channel.partition("/")
    return device, name or device


def key_of(entity_set: str, obj: Any) -> Any:
    """The ``@iot.id`` of an entity object as Catalog.members gives it."""
    if entity_set in ("Things", "Locations"):
        return obj.device_id
    if entity_set in ("Datastreams", "Observations"):
        return obj.id
    if entity_set == "Sensors":
        return f"{obj[0]}:{obj[1]}"
    return obj


class Options:
    """The query options of one collection or entity: $top, $skip, $count, $filter, $orderby, $expand, $select."""

    def __init__(self, raw: dict[str, str], *, where: str = "", depth: int = 0) -> None:
        self.raw = raw
        self.depth = depth
        if depth > MAX_EXPAND_DEPTH:
            raise StaError(400, f"$expand: nested deeper than {MAX_EXPAND_DEPTH} levels")
        for name in raw:
            if name.startswith("$") and name not in QUERY_OPTIONS:
                raise StaError(400, f"{where}{name}: not supported here; query options are {', '.join(QUERY_OPTIONS)}")
        self.top = self._int("$top", DEFAULT_TOP)
        self.skip = self._int("$skip", 0)
        # OGC 18-088 §9.3.3.3: a $top above the server's page size is replaced by the page size.
        self.top = min(self.top, MAX_TOP)
        count = raw.get("$count", "false")
        if count not in ("true", "false"):
            raise StaError(400, f"{where}$count={count!r}: expected true or false")
        self.count = count == "true"
        text = raw.get("$filter")
        self.filter: Node | None = parse_filter(text) if text else None
        text = raw.get("$orderby")
        self.orderby: list[tuple[Node, bool]] = parse_orderby(text) if text else []
        self.expand = split_top_level(raw.get("$expand", ""), ",")
        select = raw.get("$select")
        self.select: list[tuple[str, ...]] | None = None
        if select is not None:
            items = split_top_level(select, ",")
            if not items:
                raise StaError(400, f"{where}$select: empty; list properties, e.g. $select=name,description")
            self.select = None if "*" in items else [tuple(item.split("/")) for item in items]

    def _int(self, name: str, default: int) -> int:
        try:
            return whole(name, self.raw.get(name), low=0, high=2**62, default=default)
        except ParamError as exc:
            raise StaError(400, str(exc)) from None


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
    if "(" in item:
        head, _, inner = item.partition("(")
        if not inner.endswith(")"):
            raise StaError(400, f"$expand={item!r}: options in parentheses look like Observations($top=5;$orderby=phenomenonTime desc)")
        for part in split_top_level(inner[:-1], ";"):
            name, eq, value = part.partition("=")
            if not eq:
                raise StaError(400, f"$expand={item!r}: options in parentheses look like $top=5;$orderby=phenomenonTime desc")
            options[name.strip()] = value.strip()
        item = head
    return [step.strip() for step in item.split("/") if step.strip()], options


def grouped_expand(entity_set: str, items: list[str]) -> dict[str, dict[str, str]]:
    """$expand items by the navigation property they start with, each with the options for its target.

    ``Datastreams/Thing,Datastreams/Sensor`` becomes one expansion of Datastreams that itself
    expands Thing and Sensor, as OData merges them.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        path, raw = parse_expand_item(item)
        if not path:
            raise StaError(400, f"$expand={item!r}: name a navigation property of {entity_set}: {', '.join(NAVIGATION[entity_set])}")
        nav = path[0]
        if nav not in NAVIGATION[entity_set]:
            raise StaError(400, f"$expand={item!r}: {entity_set} can expand {', '.join(NAVIGATION[entity_set])}")
        if len(path) > 1:
            inner = "/".join(path[1:]) + (f"({';'.join(f'{k}={v}' for k, v in raw.items())})" if raw else "")
            raw = {"$expand": inner}
        merged = out.setdefault(nav, {})
        for name, value in raw.items():
            merged[name] = f"{merged[name]},{value}" if name == "$expand" and name in merged else value
    return out


def sort_key(value: Any) -> tuple[Any, ...]:
    """Orders any value: nulls first, then numbers, booleans, strings (OGC 18-088: nulls before values ascending)."""
    if isinstance(value, Many):
        value = value[0] if value else None
    if value is None:
        return (0,)
    if value is True or value is False:
        return (1, 1, int(value))
    if isinstance(value, int | float):
        return (1, 0, value)
    return (1, 2, str(value))


def sort_by(items: list[Any], keys: Sequence[tuple[Callable[[Any], Any], bool]]) -> list[Any]:
    """Stable sort on several keys, each ascending or descending (last key first, Python's sort is stable)."""
    out = list(items)
    for getter, descending in reversed(keys):
        out.sort(key=functools.partial(_sort_key_of, getter), reverse=descending)
    return out


def _of_member(getter: Callable[[Any], Any]) -> Callable[[tuple[Any, Any]], Any]:
    """``getter`` applied to the entity of a (key, entity) member."""
    return lambda member: getter(member[1])


def _sort_key_of(getter: Callable[[Any], Any], item: Any) -> Any:
    return sort_key(getter(item))


class Catalog:
    """One request's view of the entities (small sets in memory; observations straight from the store).

    ``budget`` is what the request may spend on Observations (hub.publicreads); None only for
    in-process callers (tests, the bench).
    """

    def __init__(self, store: Store, base: str, devices: list[Device], channels: list[StoredChannel], *, budget: QueryBudget | None = None) -> None:
        self.store = store
        self.budget = budget
        self.slice_started = time.perf_counter()
        self.base = base
        self.devices = {d.device_id: d for d in devices if d.status != "pending"}
        self.channels = [c for c in channels if c.device_id in self.devices]
        self.channel_by_id = {c.id: c for c in self.channels}
        # Channels of devices not shown (pending) must not leak through an unrestricted Observations query.
        self.hidden_channels = len(self.channels) < len(channels)
        # The Datastreams of each Thing, Sensor and ObservedProperty, found once: a $filter path such as
        # Datastreams/name follows them for every entity, and a scan of all channels each time is quadratic in the fleet.
        self.streams_of: dict[tuple[str, Any], list[tuple[Any, Any]]] = {}
        for c in self.channels:
            sensor, prop = sensor_parts(c)
            for owner in (("Things", c.device_id), ("Sensors", (c.device_id, sensor)), ("ObservedProperties", prop)):
                self.streams_of.setdefault(owner, []).append((c.id, c))
        self.rendered: dict[tuple[str, Any], dict[str, Any]] = {}
        self.entities = 0
        self.compiled: dict[tuple[Any, ...], Any] = {}
        self.observation_pages: dict[tuple[Any, ...], tuple[list[tuple[Any, Any]], bool, int | None]] = {}

    @classmethod
    async def load(cls, store: Store, base: str, *, budget: QueryBudget | None = None) -> Catalog:
        return cls(store, base, await store.devices(), await store.channels(), budget=budget)

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
            if not isinstance(key, int):
                raise StaError(404, f"Observations({key_text(key)}) does not exist; Observation ids are numbers")
            rows = await self.store.readings(reading_id=key, limit=1, budget=self.budget)
            if not rows or rows[0].channel_id not in self.channel_by_id:
                raise StaError(404, f"Observations({key}) does not exist")
            return rows[0]
        for k, obj in self.members(entity_set):
            if k == key:
                return obj
        raise StaError(404, f"{entity_set}({key_text(key)}) does not exist")

    def related(self, entity_set: str, obj: Any, nav: str) -> list[tuple[Any, Any]] | None:
        """The members a navigation leads to (None for Observations, which come from the store)."""
        target, _ = NAVIGATION[entity_set][nav]
        if target == "Observations":
            return None
        if entity_set == "Things" and nav == "Datastreams":
            return self.streams_of.get(("Things", obj.device_id), [])
        if entity_set == "Things" and nav == "Locations":
            return [(obj.device_id, obj)] if obj.latitude is not None else []
        if entity_set == "Locations":
            return [(obj.device_id, obj)]
        if entity_set == "Datastreams":
            device_id, (sensor, prop) = obj.device_id, sensor_parts(obj)
            if nav == "Thing":
                return [(device_id, self.devices[device_id])]
            if nav == "Sensor":
                return [(f"{device_id}:{sensor}", (device_id, sensor))]
            return [(prop, prop)]
        if entity_set == "Sensors":
            return self.streams_of.get(("Sensors", tuple(obj)), [])
        if entity_set == "ObservedProperties":
            return self.streams_of.get(("ObservedProperties", obj), [])
        # A channel that appeared after this request loaded the catalog is not part of its view.
        channel = self.channel_by_id.get(obj.channel_id)
        return [] if channel is None else [(channel.id, channel)]

    # --- JSON of each entity type -----------------------------------------------------

    def link(self, entity_set: str, key: Any) -> str:
        return f"{self.base}/{entity_set}({key_text(key)})"

    def render(self, entity_set: str, key: Any, obj: Any) -> dict[str, Any]:
        """The full JSON of one entity (kept for the request: filters and expansions read it again)."""
        cached = self.rendered.get((entity_set, key))
        if cached is not None:
            return cached
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
                       unitOfMeasurement={"name": c.unit, "symbol": c.unit,
                                          "definition": "https://www.rfc-editor.org/rfc/rfc8428#section-12.1" if c.unit else ""},
                       properties={"resolution": c.resolution})
        elif entity_set == "Sensors":
            device_id, sensor = obj
            out.update(name=sensor, description=f"device {sensor} on gateway {device_id}", encodingType="text/plain", metadata=f"{device_id}:{sensor}")
        elif entity_set == "ObservedProperties":
            out.update(name=obj, definition=f"urn:ocn:channel:{obj}", description=f"channel {obj}")
        elif entity_set == "Observations":
            r: StoredReading = obj
            # Any stored time and value can be written: years past 9999 as ISO 8601 expanded years, NaN and ±inf as strings.
            out.update(phenomenonTime=iso_time(r.ts_ms), resultTime=iso_time(r.ts_ms), result=json_number(r.value))
            quality = quality_text(r)
            if quality is not None:
                out["resultQuality"] = quality
        for nav in NAVIGATION[entity_set]:
            out[f"{nav}@iot.navigationLink"] = f"{self_link}/{nav}"
        if entity_set != "Observations":
            self.rendered[(entity_set, key)] = out
        return out

    # --- what a $filter / $orderby path means -----------------------------------------

    def resolver(self, entity_set: str) -> Callable[[tuple[str, ...]], tuple[Getter, str]]:
        return lambda path: self.resolve_path(entity_set, path)

    def resolve_path(self, entity_set: str, path: tuple[str, ...]) -> tuple[Getter, str]:
        """The getter and type of a property path on ``entity_set`` (through navigation properties where cheap)."""
        head, rest = path[0], path[1:]
        shown = "/".join(path)
        if head in NAVIGATION[entity_set]:
            target, many = NAVIGATION[entity_set][head]
            if not rest:
                raise FilterError(f"{shown} is a navigation property; name one of its properties, e.g. {head}/@iot.id")
            if target == "Observations":
                raise FilterError(f"{shown}: paths into Observations are not supported in a $filter on {entity_set}; "
                                  f"query Observations with a Datastream/… condition instead")
            inner, kind = self.resolve_path(target, rest)
            if entity_set == "Observations":
                channels = self.channel_by_id

                def through_channel(r: StoredReading) -> Any:
                    channel = channels.get(r.channel_id)  # None: a channel newer than this request's catalog
                    return None if channel is None else inner(channel)

                return through_channel, kind

            def follow(obj: Any) -> Any:
                members = self.related(entity_set, obj, head) or []
                if many:
                    return flat(inner(o) for _, o in members)
                return inner(members[0][1]) if members else None

            return follow, kind
        if head in ID_NAMES:
            if rest:
                raise FilterError(f"{shown}: @iot.id has no sub-properties")
            if entity_set == "Observations":
                return (lambda r: r.id), "num"
            return (lambda obj: key_of(entity_set, obj)), "num" if entity_set in NUMERIC_IDS else "str"
        declared = PROPERTIES[entity_set].get(head)
        if declared is None:
            hint = ", ".join([*PROPERTIES[entity_set], "@iot.id",
                              *(f"{n}/…" for n in NAVIGATION[entity_set] if NAVIGATION[entity_set][n][0] != "Observations")])
            raise FilterError(f"{entity_set} have no property {head!r}; expected one of {hint}")
        kind = declared
        if rest and kind != "json":
            raise FilterError(f"{shown}: {head} has no sub-properties")
        if entity_set == "Observations":
            if head in ("phenomenonTime", "resultTime"):
                return (lambda r: r.ts_ms), "time"
            if head == "result":
                return (lambda r: r.value), "any"
            return quality_text, "str"

        def dig(obj: Any) -> Any:
            value: Any = self.render(entity_set, key_of(entity_set, obj), obj)
            for step in path:
                value = value.get(step) if isinstance(value, dict) else None
            return value

        return dig, "any" if rest else kind

    # Parsed and compiled once per request: an expansion's options apply to every entity it hangs from
    # (10,000 Observations each expanding Datastream(…) would parse and compile its $filter 10,000 times).

    def predicate(self, entity_set: str, tree: Node) -> Callable[[Any], bool]:
        key = ("predicate", entity_set, repr(tree))  # a tree may hold a dict (a WKT literal): its repr is the key
        if key not in self.compiled:
            self.compiled[key] = compile_predicate(tree, self.resolver(entity_set))
        return self.compiled[key]

    def order_keys(self, entity_set: str, orderby: list[tuple[Node, bool]]) -> list[tuple[Getter, bool]]:
        key = ("order", entity_set, repr(orderby))
        if key not in self.compiled:
            self.compiled[key] = [(compile_value(expression, self.resolver(entity_set))[0], descending) for expression, descending in orderby]
        return self.compiled[key]

    def expansions(self, entity_set: str, options: Options) -> list[tuple[str, Options]]:
        """The navigation properties ``options`` expands on ``entity_set``, each with its own options."""
        key = ("expand", entity_set, tuple(options.expand), options.depth)
        if key not in self.compiled:
            self.compiled[key] = [(nav, Options(raw, where=f"$expand={nav}(…): ", depth=options.depth + 1))
                                  for nav, raw in grouped_expand(entity_set, options.expand).items()]
        return self.compiled[key]

    # --- collections ------------------------------------------------------------------

    def select_members(self, entity_set: str, members: list[tuple[Any, Any]], options: Options) -> tuple[list[tuple[Any, Any]], bool, int]:
        """$filter, $orderby, $skip and $top over a small set: (page, more after it, count matching)."""
        if options.filter is not None:
            keep = self.predicate(entity_set, options.filter)
            members = [m for m in members if keep(m[1])]
        # Without $orderby, by @iot.id: a stable order across pages (OGC 18-088 §9.3.3.3).
        members = sorted(members, key=lambda m: sort_key(m[0]))
        if options.orderby:
            keys = [(_of_member(getter), descending) for getter, descending in self.order_keys(entity_set, options.orderby)]
            members = sort_by(members, keys)
        chosen = members[options.skip : options.skip + options.top]
        return chosen, options.skip + options.top < len(members), len(members)

    def observation_query(self, options: Options, channel_id: int | None) -> dict[str, Any] | None:
        """What to ask the store for: channel, time range and predicate; None when nothing can match."""
        since, until = (None, None) if options.filter is None else time_range(options.filter, TIME_PATHS)
        allowed: set[int] | None = {channel_id} if channel_id is not None else None
        rest: list[Node] = []
        for part in conjuncts(options.filter) if options.filter is not None else []:
            read = list(paths(part))
            if read and all(p[0] == "Datastream" and len(p) > 1 for p in read):
                # A condition on the Datastream alone picks channels: decide it once per channel, not per reading.
                keep = self.predicate("Datastreams", strip_prefix(part, "Datastream"))
                chosen = {c.id for c in self.channels if keep(c)}
                allowed = chosen if allowed is None else allowed & chosen
            elif time_range(part, TIME_PATHS) == (None, None):
                rest.append(part)
            # else: a time comparison the store applies exactly through [since, until)
        if allowed is None and self.hidden_channels:
            allowed = set(self.channel_by_id)
        if allowed is not None:
            allowed &= set(self.channel_by_id)
            if not allowed:
                return None
        if since is not None and until is not None and since >= until:
            return None
        tree: Node | None = None
        for part in rest:
            tree = part if tree is None else ("and", tree, part)
        match = self.predicate("Observations", tree) if tree is not None else None
        store_channel = next(iter(allowed)) if allowed is not None and len(allowed) == 1 else None
        if allowed is not None and store_channel is None:
            inner, members = match, allowed
            match = (lambda r: r.channel_id in members and inner(r)) if inner is not None else (lambda r: r.channel_id in members)
        return {"channel_id": store_channel, "since_ms": since, "until_ms": until, "match": match}

    async def observations(self, options: Options, *, channel_id: int | None) -> tuple[list[tuple[Any, Any]], bool, int | None]:
        """One page of Observations: (page, more after it, count matching if $count=true).

        Asked once per request for the same Datastream and options: nested expansions that come back
        to a Datastream (Observations($expand=Datastream($expand=Observations(…)))) ask again for every
        entity above them, and each answer may decode up to a million readings.
        """
        key = (channel_id, options.raw.get("$filter"), options.raw.get("$orderby"), options.top, options.skip, options.count)
        if key not in self.observation_pages:
            self.observation_pages[key] = await self.fetch_observations(options, channel_id=channel_id)
        return self.observation_pages[key]

    async def fetch_observations(self, options: Options, *, channel_id: int | None) -> tuple[list[tuple[Any, Any]], bool, int | None]:
        query = self.observation_query(options, channel_id)
        if query is None:
            return [], False, 0
        keys = observation_order(options.orderby)
        window = options.skip + options.top + 1
        try:
            if len(keys) == 1 or (keys[1] == ("id", keys[0][1])):
                order, descending = keys[0]
                rows = await self.store.readings(**query, order=order, descending=descending, limit=options.top + 1, offset=options.skip,
                                                 budget=self.budget)
            else:
                rows = (await self.sorted_observations(query, keys, window))[options.skip :]
        except ValueError as exc:
            raise StaError(400, f"$top/$skip: {exc}") from None
        count = None
        if options.count:
            count = await self.store.count_readings(**query, budget=self.budget)
            if count is None:
                raise StaError(400, "$count=true: more than a million Observations would have to be examined; "
                                    "narrow the $filter with phenomenonTime (or count without a condition on result)")
        return [(r.id, r) for r in rows[: options.top]], len(rows) > options.top, count

    async def sorted_observations(self, query: dict[str, Any], keys: list[tuple[str, bool]], window: int) -> list[StoredReading]:
        """The first ``window`` Observations in a several-key order the store cannot give: the store orders by
        the first key; the rows tied with the window's last value are fetched whole and everything is sorted here."""
        first, descending = keys[0]
        rows = await self.store.readings(**query, order=first, descending=descending, limit=window, budget=self.budget)
        getters = [(OBSERVATION_FIELD[field], desc) for field, desc in keys]
        if len(rows) < window:
            return sort_by(rows, getters)[:window]
        field = OBSERVATION_FIELD[first]
        # Tied means equal in the sort order, not ==: True == 1 and False == 0, yet bools sort after every number.
        boundary = sort_key(field(rows[-1]))
        before = [r for r in rows if sort_key(field(r)) != boundary]
        tied = dict(query)
        if first == "ts_ms":
            last = rows[-1].ts_ms
            # [last, last + 1), but no store takes 2^63 as a bound: nothing lies after the last time there is.
            tied.update(since_ms=last, until_ms=last + 1 if last < MAX_TIME else None)
        else:
            inner = query["match"]
            tied["match"] = lambda r: sort_key(field(r)) == boundary and (inner is None or inner(r))
        ties = await self.store.readings(**tied, order="id", limit=MAX_TIES + 1, budget=self.budget)
        if len(ties) > MAX_TIES:
            raise StaError(400, f"$orderby: more than {MAX_TIES} Observations share one {first} value; add a $filter or order by @iot.id")
        return (sort_by(before, getters) + sort_by(ties, getters))[:window]

    async def collection(self, entity_set: str, members: list[tuple[Any, Any]] | None, options: Options, *, url: str,
                         channel_id: int | None = None) -> dict[str, Any]:
        if members is None:
            chosen, more, total = await self.observations(options, channel_id=channel_id)
        else:
            chosen, more, total = self.select_members(entity_set, members, options)
        out: dict[str, Any] = {}
        if options.count:
            out["@iot.count"] = total
        if more:
            out["@iot.nextLink"] = next_link(url, options)
        out["value"] = [await self.expanded(entity_set, key, obj, options) for key, obj in chosen]
        return out

    async def expanded(self, entity_set: str, key: Any, obj: Any, options: Options) -> dict[str, Any]:
        """One entity with its $expand and $select applied."""
        self.entities += 1
        if self.entities > MAX_ENTITIES:
            raise StaError(400, f"the response would hold more than {MAX_ENTITIES} entities, expansions included; "
                                "use a smaller $top inside $expand and follow each expansion's @iot.nextLink")
        if self.entities % YIELD_EVERY == 0:
            # Rendering 50,000 entities is seconds of Python: others get their turns meanwhile, and
            # public rendering as a whole keeps to its share of the loop (hub.budget.LoopShare).
            now = time.perf_counter()
            if self.budget is None:
                await asyncio.sleep(0)
            else:
                await self.budget.pause_rendering(now - self.slice_started)
            self.slice_started = time.perf_counter()
        entity = dict(self.render(entity_set, key, obj))
        expanded: list[str] = []
        for nav, nested in self.expansions(entity_set, options):
            target, many = NAVIGATION[entity_set][nav]
            members = self.related(entity_set, obj, nav)
            nav_url = f"{self.link(entity_set, key)}/{nav}"
            if members is None:
                chosen, more, total = await self.observations(nested, channel_id=obj.id)
            elif many:
                chosen, more, total = self.select_members(target, members, nested)
            else:
                chosen, more, total = members, False, len(members)
            values = [await self.expanded(target, k, o, nested) for k, o in chosen]
            expanded.append(nav)
            if many:
                if nested.count:
                    entity[f"{nav}@iot.count"] = total
                entity[nav] = values
                if more:
                    entity[f"{nav}@iot.nextLink"] = next_link(nav_url, nested)
            else:
                entity[nav] = values[0] if values else None
        if options.select is None:
            return entity
        return select_properties(entity_set, entity, options.select, expanded)


def quality_text(r: StoredReading) -> str | None:
    if r.quality is None:
        return None
    return ["good", "suspect", "bad"][r.quality] if 0 <= r.quality <= 2 else str(r.quality)


OBSERVATION_FIELD: dict[str, Callable[[StoredReading], Any]] = {"ts_ms": lambda r: r.ts_ms, "value": lambda r: r.value, "id": lambda r: r.id}


def observation_order(orderby: list[tuple[Node, bool]]) -> list[tuple[str, bool]]:
    """$orderby on Observations as store fields (ts_ms, value, id), redundant keys dropped; default phenomenonTime."""
    keys: list[tuple[str, bool]] = []
    for expression, descending in orderby:
        name = expression[1][0] if expression[0] == "path" and len(expression[1]) == 1 else None
        field = OBSERVATION_ORDER.get(name or "")
        if field is None:
            raise FilterError(f"$orderby on Observations takes phenomenonTime, resultTime, result or @iot.id (each asc or desc), "
                              f"not {'/'.join(expression[1]) if expression[0] == 'path' else 'an expression'}")
        if field not in (f for f, _ in keys):
            keys.append((field, descending))
        if field == "id":
            break
    return keys or [("ts_ms", False)]


def select_properties(entity_set: str, entity: dict[str, Any], select: list[tuple[str, ...]], expanded: list[str]) -> dict[str, Any]:
    """The selected properties of a rendered entity, plus every expanded navigation property (OGC 18-088 §9.3.2.2)."""
    out: dict[str, Any] = {}
    for path in select:
        head = path[0]
        if head in ID_NAMES and len(path) == 1:
            out["@iot.id"] = entity["@iot.id"]
        elif head in SELF_LINK_NAMES and len(path) == 1:
            out["@iot.selfLink"] = entity["@iot.selfLink"]
        elif head in NAVIGATION[entity_set]:
            if len(path) > 1:
                raise StaError(400, f"$select={'/'.join(path)}: select inside the expansion instead, e.g. $expand={head}($select={'/'.join(path[1:])})")
            if head not in expanded:
                out[f"{head}@iot.navigationLink"] = entity[f"{head}@iot.navigationLink"]
        elif head in PROPERTIES[entity_set]:
            if len(path) > 1 and PROPERTIES[entity_set][head] != "json":
                raise StaError(400, f"$select={'/'.join(path)}: {head} has no sub-properties")
            if head not in entity:
                continue
            if len(path) == 1:
                out[head] = entity[head]
                continue
            source: Any = entity
            target: Any = out
            for step in path[:-1]:
                source = source.get(step) if isinstance(source, dict) else None
                target = target.setdefault(step, {})
            if isinstance(source, dict) and path[-1] in source and isinstance(target, dict):
                target[path[-1]] = source[path[-1]]
        else:
            names = ", ".join(["@iot.id", "@iot.selfLink", *PROPERTIES[entity_set], *NAVIGATION[entity_set]])
            raise StaError(400, f"$select: {entity_set} have no property {head!r}; expected one of {names}")
    for nav in expanded:
        for name in (f"{nav}@iot.count", nav, f"{nav}@iot.nextLink"):
            if name in entity:
                out[name] = entity[name]
    return out


def next_link(url: str, options: Options) -> str:
    query = dict(options.raw)
    query["$skip"] = str(options.skip + options.top)
    query["$top"] = str(options.top)
    return str(URL(url).with_query(query))


def entity_id(entity_set: str, raw: str) -> int:
    """A numeric ``@iot.id`` in a path: Datastreams are channel ids (signed 64-bit), Observations a chunk id and a 16-bit position."""
    high = MAX_OBSERVATION_ID if entity_set == "Observations" else MAX_ID
    try:
        return whole(f"{entity_set}(id)", raw, low=0, high=high)
    except ParamError as exc:
        raise StaError(400, str(exc)) from None


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
            key = entity_id(m.group("name"), raw) if raw[0] != "'" else raw[1:-1].replace("''", "'")
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
        members = catalog.related(entity_set, obj, nav)
        if many and nav_key is None and position == len(steps):
            return await catalog.collection(target, members, options, url=url, channel_id=obj.id if members is None else None)
        if members is None:
            obj = await catalog.one(target, nav_key)
            if obj.channel_id != key:
                raise StaError(404, f"{nav}({key_text(nav_key)}) is not related to {entity_set}({key_text(key)})")
            key = nav_key
        else:
            match = [(k, o) for k, o in members if nav_key is None or k == nav_key]
            if not match:
                raise StaError(404, f"{nav}({key_text(nav_key)}) is not related to {entity_set}({key_text(key)})")
            key, obj = match[0]
        entity_set = target
    return await catalog.expanded(entity_set, key, obj, options)


@routes.get(PREFIX)
@routes.get(PREFIX + "/")
async def service_root(request: web.Request) -> web.Response:
    base = f"{request.url.origin()}{PREFIX}"
    return web.json_response(
        {
            "value": [{"name": name, "url": f"{base}/{name}"} for name in SETS],
            "serverSettings": {"conformance": ["http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
                                               "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
                                               "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data"]},
        }
    )


def refused(exc: Refused) -> web.Response:
    return web.json_response({"code": exc.status, "type": "error", "message": exc.detail}, status=exc.status, headers=exc.headers)


@routes.get(PREFIX + "/{path:.+}")
@public_read(refused, narrow="narrow the $filter with phenomenonTime or a Datastream, or order by phenomenonTime")
async def entity(request: web.Request, budget: QueryBudget) -> web.StreamResponse:
    base = f"{request.url.origin()}{PREFIX}"
    try:
        steps = parse_path(request.match_info["path"].rstrip("/"))
        options = Options(dict(request.query))
        catalog = await Catalog.load(request.app[READ_STORE], base, budget=budget)
        body = await resolve(catalog, steps, options, f"{base}/{request.match_info['path']}")
    except FilterError as exc:
        return web.json_response({"code": 400, "type": "error", "message": str(exc)}, status=400)
    except StaError as exc:
        return web.json_response({"code": exc.status, "type": "error", "message": exc.detail}, status=exc.status)
    return await send_json(request, body)
