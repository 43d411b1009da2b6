"""generalize_location: a latitude or longitude leaves as the centre of its grid square or geohash cell."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.location import METRES_PER_DEGREE, geohash_cell_deg, grid_cell_deg, snap
from edge.privacy.rule import Reader, Rule, axis_of, parse_distance_m
from edge.privacy.rules.base import PolicyTerms, RuleKind, StageServices, device_of, is_number
from edge.protocol.types import Channel, Kind, Reading

__all__ = ["MIN_PERSONAL_CELL_M", "GeneralizeLocation"]

# The smallest cell generalize_location may put a personal position in. A GNSS fix is good to a
# few metres: a 1 m grid or a 12-character geohash (2 cm) releases the position as it is, which
# takes keep with allow_personal and a legal_basis (and says so on the notice).
MIN_PERSONAL_CELL_M = 100.0


def _cell_m(rule: Rule) -> float:
    """The side of a cell on the ground, in metres (north to south for a geohash)."""
    if rule.grid_m is not None:
        return rule.grid_m
    lat_bits = 5 * (rule.geohash or 12) // 2
    return 180.0 / (1 << lat_bits) * 111_320.0


class GeneralizeLocation(RuleKind):
    name = "generalize_location"
    settings = frozenset({"grid", "geohash", "axis"})
    safe_for_personal = True
    dtpr = ("de-identified", "generalized")

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        table = r.table
        if ("grid" in table) == ("geohash" in table):
            r.bad("grid", table.get("grid"), 'either grid = "250m" (a square grid cell) or geohash = 6, not both')
        if "grid" in table:
            try:
                fields["grid_m"] = parse_distance_m(table["grid"])
            except ValueError as exc:
                r.bad("grid", table["grid"], str(exc).removeprefix("expected "))
        fields["geohash"] = r.integer("geohash", 1, 12)
        axis = table.get("axis")
        if axis is not None and axis not in ("latitude", "longitude"):
            r.bad("axis", axis, '"latitude" or "longitude"')
        else:
            fields["axis"] = axis

    def channel_problems(self, rule: Rule, channel: Channel, where: str) -> list[str]:
        problems: list[str] = []
        if channel.kind is not Kind.NUMBER:
            problems.append(f"{where}: {channel.id} carries {channel.kind.value} values; {rule.rule} needs numbers")
        if channel.personal and _cell_m(rule) < MIN_PERSONAL_CELL_M:
            cell = f'grid = "{rule.grid_m:g}m"' if rule.grid_m is not None else f"geohash = {rule.geohash}"
            problems.append(
                f"{where}: {channel.id} is personal; {cell} makes cells of about {_cell_m(rule):.3g} m, too "
                f'small to hide the exact position: use cells of at least {MIN_PERSONAL_CELL_M:g} m (grid = "100m" '
                f"or more, geohash = 7 or less), or keep with allow_personal = true and a legal_basis"
            )
        if axis_of(rule, channel.id) is None:
            problems.append(
                f'{where}: cannot tell whether {channel.id} is a latitude or a longitude; set axis = "latitude" '
                f'or axis = "longitude"'
            )
        return problems

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        if rule.geohash is not None:
            lat_m = geohash_cell_deg(rule.geohash, "latitude") * METRES_PER_DEGREE
            cell = words.count("rule.location_geohash", rule.geohash, metres=words.whole(lat_m))
        else:
            cell = words("rule.location_grid", metres=words.whole(rule.grid_m or 0.0))
        return words("rule.location", cell=cell)

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        how = rule.description or rule.purpose
        cell = f"{rule.grid_m:g} m grid" if rule.grid_m else f"geohash-{rule.geohash}"
        return [replace(channel, personal=False, description=how or f"centre of its {cell} cell")]

    def apply(self, rule: Rule, reading: Reading, unit: str, stage: StageServices) -> list[Reading]:
        value = reading.value
        if not is_number(value) or not -180.0 <= float(value) <= 180.0:
            return stage.drop("bad_value")
        axis = axis_of(rule, reading.channel) or "longitude"  # never None: check_channels refuses such a channel
        device = device_of(reading.channel)
        if rule.geohash is not None:
            cell = geohash_cell_deg(rule.geohash, axis)
        else:
            cell = grid_cell_deg(rule.grid_m or 0.0, axis, stage.latitude_of(device))
        if axis == "latitude" and not -90.0 <= float(value) <= 90.0:
            return stage.drop("bad_value")
        centre = snap(float(value), cell, axis)
        if axis == "latitude":
            stage.remember_latitude(device, centre)  # the cell, never the exact value, is remembered
        return stage.release(Reading(reading.channel, reading.ts_ms, centre, unit, reading.quality))
