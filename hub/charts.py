"""Server-side SVG line charts of recent readings: no JavaScript, readable without a browser plug-in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

from hub.render import clock

__all__ = ["line_chart"]


def _nice(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e15 or magnitude < 1e-3:
        return f"{value:.3g}"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _plottable(value: Any) -> float | None:
    """A stored value as a finite float, or None for one a line cannot show (text, NaN, ±inf, an integer past 1.8e308)."""
    if not isinstance(value, int | float) or isinstance(value, int) and abs(value) > 2**1023:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def line_chart(points: Sequence[tuple[int, Any]], *, title: str, unit: str = "", width: int = 640, height: int = 180) -> Markup:
    """An SVG chart of (ts_ms, value) points in time order, with min/max and first/last time labels.

    Any stored value may be passed: those a line cannot show (see ``_plottable``) are left out.
    """
    left, right, top, bottom = 64, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    label = f"{title} ({unit})" if unit else title
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
        f'<text x="{left}" y="16" class="chart-title">{escape(label)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="chart-frame"/>',
    ]
    finite = [(t, v) for t, v in ((t, _plottable(v)) for t, v in points) if v is not None]
    if not finite:
        parts.append(f'<text x="{left + 8}" y="{top + plot_h / 2}" class="chart-empty">no readings yet</text></svg>')
        return Markup("".join(parts))
    t0, t1 = finite[0][0], finite[-1][0]
    # Halves: hi - lo overflows for values near ±1.8e308. A flat line gets room around it, also where ±1 is lost in rounding.
    hi, lo = max(v for _, v in finite) / 2, min(v for _, v in finite) / 2
    if hi == lo:
        pad = max(0.5, abs(hi) / 2**20)
        hi, lo = hi + pad, lo - pad
    span_t = max(t1 - t0, 1)

    def xy(t: int, v: float) -> str:
        x = left + (t - t0) / span_t * plot_w if t1 > t0 else left + plot_w / 2
        y = top + (hi - v / 2) / (hi - lo) * plot_h
        return f"{x:.1f},{y:.1f}"

    path = " ".join(xy(t, v) for t, v in finite)
    parts += [
        f'<text x="{left - 6}" y="{top + 10}" class="chart-axis" text-anchor="end">{escape(_nice(hi * 2))}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" class="chart-axis" text-anchor="end">{escape(_nice(lo * 2))}</text>',
        f'<text x="{left}" y="{height - 8}" class="chart-axis">{escape(clock(t0, seconds=False))}</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" class="chart-axis" text-anchor="end">{escape(clock(t1, seconds=False))}</text>',
        f'<polyline points="{path}" class="chart-line" fill="none"/>',
    ]
    if len(finite) == 1:
        x, y = xy(*finite[0]).split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="3" class="chart-dot"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
