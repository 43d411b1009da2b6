"""Location generalisation: replace an exact latitude or longitude by the centre of its grid or geohash cell."""

from __future__ import annotations

import math

__all__ = ["METRES_PER_DEGREE", "DEFAULT_REFERENCE_LATITUDE", "geohash_cell_deg", "grid_cell_deg", "snap"]

METRES_PER_DEGREE = 111_320.0  # one degree of latitude, and of longitude at the equator
# Without a latitude to go by, a metre grid on longitude assumes 60°: cells are then at least
# as wide as asked anywhere between 60°S and 60°N, i.e. errs on the side of coarser.
DEFAULT_REFERENCE_LATITUDE = 60.0


def geohash_cell_deg(precision: int, axis: str) -> float:
    """Cell size in degrees of a geohash of ``precision`` characters along ``axis``.

    A geohash of p characters has 5p bits, interleaved longitude first, so longitude
    gets ceil(5p/2) bits and latitude floor(5p/2); each axis is independent.
    """
    bits = 5 * precision
    lat_bits = bits // 2
    if axis == "latitude":
        return 180.0 / (1 << lat_bits)
    return 360.0 / (1 << (bits - lat_bits))


def grid_cell_deg(metres: float, axis: str, latitude: float | None) -> float:
    """Cell size in degrees of a square ``metres`` grid along ``axis`` (longitude cells widen towards the poles)."""
    if axis == "latitude":
        return metres / METRES_PER_DEGREE
    lat = DEFAULT_REFERENCE_LATITUDE if latitude is None else latitude
    return metres / (METRES_PER_DEGREE * max(math.cos(math.radians(lat)), 0.01))


def snap(value: float, cell_deg: float, axis: str) -> float:
    """The centre of the cell of size ``cell_deg`` (counted from -90 or -180) that contains ``value``."""
    origin, span = (-90.0, 180.0) if axis == "latitude" else (-180.0, 360.0)
    cells = max(1, math.ceil(span / cell_deg - 1e-9))
    index = min(max(math.floor((value - origin) / cell_deg), 0), cells - 1)
    centre = origin + (index + 0.5) * cell_deg
    return round(min(centre, origin + span), 7)
