"""Small inline-SVG charts for the replay report: lines, stacked bars, a histogram, a
timeline of windows. No scripts and no external files, so the page works offline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from relayguard.durations import format_duration

WIDTH, HEIGHT = 560, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 30, 34
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
RED = "#d62728"


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    color: str
    values: Sequence[float]


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times 10^k at or above value (at least 4: whole-number ticks)."""
    if value <= 4:
        return 4.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * exp >= value:
            return float(m * exp)
    return float(10 * exp)


def _time_step(duration: float) -> float:
    for step in (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800):
        if duration / step <= 8:
            return float(step)
    return 604800.0


def time_label(seconds: float) -> str:
    """An axis tick (whole minutes or hours): '30m', '6h', '1h30m'."""
    return format_duration(seconds)


class _Frame:
    """Axes for x in [0, x_max] (seconds or bins) and y in [0, y_max]."""

    def __init__(self, x_max: float, y_max: float, *, height: int = HEIGHT) -> None:
        self.x_max = x_max or 1.0
        self.y_max = nice_max(y_max)
        self.height = height
        self.w = WIDTH - LEFT - RIGHT
        self.h = height - TOP - BOTTOM

    def x(self, v: float) -> float:
        return LEFT + self.w * v / self.x_max

    def y(self, v: float) -> float:
        return TOP + self.h * (1 - v / self.y_max)

    def axes(self, y_label: str, x_ticks: Sequence[tuple[float, str]]) -> list[str]:
        bottom = TOP + self.h
        out = [
            f'<line x1="{LEFT}" y1="{bottom}" x2="{LEFT + self.w}" y2="{bottom}" class="axis"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" class="axis"/>',
        ]
        for i in range(5):
            v = self.y_max * i / 4
            yy = self.y(v)
            label = f"{v:g}" if v < 10_000 else f"{v / 1000:g}k"
            out.append(
                f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{LEFT + self.w}" y2="{yy:.1f}" class="grid"/>'
            )
            out.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        for v, label in x_ticks:
            xx = self.x(v)
            out.append(
                f'<line x1="{xx:.1f}" y1="{TOP + self.h}" x2="{xx:.1f}" '
                f'y2="{TOP + self.h + 4}" class="axis"/>'
            )
            out.append(
                f'<text x="{xx:.1f}" y="{TOP + self.h + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
        out.append(f'<text x="{LEFT}" y="{TOP - 8}" class="unit">{escape(y_label)}</text>')
        return out


def _time_ticks(duration: float) -> list[tuple[float, str]]:
    step = _time_step(duration)
    return [(i * step, time_label(i * step)) for i in range(int(duration // step) + 1)]


def _legend(series: Sequence[tuple[str, str]], height: int) -> list[str]:
    out, x = [], LEFT
    for name, color in series:
        out.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="{height - 3}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def _svg(body: list[str], title: str, height: int = HEIGHT) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height + 14}" '
        f'width="{WIDTH}" height="{height + 14}" role="img" aria-label="{escape(title)}">'
    )
    return f"{head}<title>{escape(title)}</title>{''.join(body)}</svg>"


def line_chart(
    title: str,
    y_label: str,
    xs: Sequence[float],
    series: Sequence[Series],
    duration: float,
    *,
    y_max: float | None = None,
) -> str:
    """Step lines over time (xs in seconds from the start)."""
    top = y_max if y_max is not None else max((max(s.values, default=0) for s in series), default=0)
    f = _Frame(duration, top)
    body = f.axes(y_label, _time_ticks(duration))
    for s in series:
        pts = " ".join(f"{f.x(x):.1f},{f.y(v):.1f}" for x, v in zip(xs, s.values, strict=True))
        body.append(
            f'<polyline points="{pts}" fill="none" stroke="{s.color}" '
            f'stroke-width="1.6"><title>{escape(s.name)}</title></polyline>'
        )
    body += _legend([(s.name, s.color) for s in series], HEIGHT)
    return _svg(body, title)


def stacked_bars(
    title: str,
    y_label: str,
    series: Sequence[Series],
    duration: float,
    *,
    y_max: float | None = None,
    overlay: Series | None = None,
) -> str:
    """Bars per time bin, the series stacked; `overlay` drawn as a line over them."""
    bins = max((len(s.values) for s in series), default=0) or (
        len(overlay.values) if overlay else 1
    )
    totals = [sum(s.values[i] for s in series) for i in range(bins)]
    top = (
        y_max
        if y_max is not None
        else max([*totals, *(overlay.values if overlay else [])], default=0)
    )
    f = _Frame(duration, top)
    body = f.axes(y_label, _time_ticks(duration))
    width = f.w / bins
    for i in range(bins):
        base = 0.0
        t0 = duration * i / bins
        for s in series:
            v = s.values[i]
            if v <= 0:
                continue
            y1, y0 = f.y(base + v), f.y(base)
            body.append(
                f'<rect x="{f.x(t0):.1f}" y="{y1:.1f}" width="{max(width - 0.6, 0.6):.1f}" '
                f'height="{y0 - y1:.1f}" fill="{s.color}"><title>{escape(s.name)} '
                f"{time_label(t0 - t0 % 60)}: {v:g}</title></rect>"
            )
            base += v
    legend = [(s.name, s.color) for s in series]
    if overlay is not None:
        pts = " ".join(
            f"{f.x(duration * (i + 0.5) / bins):.1f},{f.y(v):.1f}"
            for i, v in enumerate(overlay.values)
        )
        body.append(
            f'<polyline points="{pts}" fill="none" stroke="{overlay.color}" '
            f'stroke-width="1.6"><title>{escape(overlay.name)}</title></polyline>'
        )
        legend.append((overlay.name, overlay.color))
    body += _legend(legend, HEIGHT)
    return _svg(body, title)


def histogram(
    title: str,
    labels: Sequence[str],
    counts: Sequence[float],
    color: str,
    *,
    y_max: float | None = None,
) -> str:
    f = _Frame(len(labels), y_max if y_max is not None else max(counts, default=0))
    body = f.axes("messages", [(i + 0.5, lab) for i, lab in enumerate(labels)])
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        y1 = f.y(c)
        body.append(
            f'<rect x="{f.x(i) + 3:.1f}" y="{y1:.1f}" width="{f.w / len(labels) - 6:.1f}"'
            f' height="{TOP + f.h - y1:.1f}" fill="{color}"><title>{escape(labels[i])}: '
            f"{c:g}</title></rect>"
        )
        body.append(
            f'<text x="{f.x(i + 0.5):.1f}" y="{y1 - 3:.1f}" text-anchor="middle" '
            f'class="small">{c:g}</text>'
        )
    return _svg(body, title)


def timeline(
    title: str,
    rows: Sequence[tuple[str, float, float, str, str]],
    duration: float,
) -> str:
    """One bar per row: (label, start, end, color, tooltip), times in seconds."""
    row_h = 18
    label_w = 200
    height = TOP + row_h * len(rows) + BOTTOM
    plot_w = WIDTH - label_w - RIGHT
    body = []
    for i, (label, start, end, color, tip) in enumerate(rows):
        y = TOP + i * row_h
        x0 = label_w + plot_w * start / duration
        x1 = label_w + plot_w * min(end, duration) / duration
        body.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(label[:34])}</text>'
        )
        body.append(
            f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1.5):.1f}" height="12"'
            f' fill="{color}"><title>{escape(tip)}</title></rect>'
        )
    base = TOP + row_h * len(rows)
    body.append(
        f'<line x1="{label_w}" y1="{base}" x2="{label_w + plot_w}" y2="{base}" class="axis"/>'
    )
    for v, lab in _time_ticks(duration):
        xx = label_w + plot_w * v / duration
        body.append(f'<line x1="{xx:.1f}" y1="{TOP}" x2="{xx:.1f}" y2="{base}" class="grid"/>')
        body.append(f'<text x="{xx:.1f}" y="{base + 14}" text-anchor="middle">{lab}</text>')
    return _svg(body, title, height)
