"""The timeline as a dependency-free SVG, alone or in an HTML page with the table."""

from __future__ import annotations

import html
import math
from pathlib import Path

from aupus_ha.lab.bench.report import BenchReport, Timeline
from aupus_ha.lab.bench.timeline import RATE_WINDOW_S

_PLOT_W, _PLOT_H = 980, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 52, 70
_COLORS = {"node-a": "#3b7dd8", "node-b": "#e8853d"}


def _color(name: str) -> str:
    return _COLORS.get(name, "#888")


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


class _Axes:
    """Data → SVG coordinates."""

    def __init__(self, tmax: float, ymax: float) -> None:
        self.tmax, self.ymax = tmax, ymax
        self.x0, self.x1 = _LEFT, _PLOT_W - _RIGHT
        self.y0, self.y1 = _PLOT_H - _BOTTOM, _TOP

    def x(self, t: float) -> float:
        return round(self.x0 + (self.x1 - self.x0) * min(max(t, 0.0), self.tmax) / self.tmax, 1)

    def y(self, v: float) -> float:
        return round(self.y0 - (self.y0 - self.y1) * v / self.ymax, 1)


def render_svg(tl: Timeline, title: str) -> str:
    """A dependency-free SVG: committed rows/s stacked by leader, published rate, faults,
    and a strip showing which instance held the lock."""
    tmax = max([t for t, _ in tl.published] + [end for _, end, _ in tl.leaders] + [1.0])
    stacks: dict[float, float] = {}
    for t, _, v in tl.committed:
        stacks[t] = stacks.get(t, 0.0) + v
    peak = max([*stacks.values(), *(v for _, v in tl.published), 1.0])
    ax = _Axes(tmax, _nice_ceiling(peak * 1.05))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_PLOT_W} {_PLOT_H}" '
        f'width="{_PLOT_W}" height="{_PLOT_H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{_PLOT_W}" height="{_PLOT_H}" fill="white"/>',
        f'<text x="{_LEFT}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        *_svg_phases(tl, ax),
        *_svg_grid(ax),
        *_svg_bars(tl, ax),
        _svg_published(tl, ax),
        *_svg_faults(tl, ax),
        *_svg_leaders(tl, ax),
        *_svg_legend(tl),
        "</svg>",
    ]
    return "\n".join(p for p in parts if p)


def _svg_phases(tl: Timeline, ax: _Axes) -> list[str]:
    out = []
    for i, (name, start, end) in enumerate(tl.phases):
        fill = "#f3f3f3" if i % 2 == 0 else "#e9f0f8"
        x0, x1 = ax.x(start), ax.x(end)
        out.append(
            f'<rect x="{x0}" y="{ax.y1}" width="{max(0.0, x1 - x0):.1f}" '
            f'height="{ax.y0 - ax.y1}" fill="{fill}"/>'
            f'<text x="{x0 + 4}" y="{ax.y1 + 12}" fill="#555">{html.escape(name)}</text>'
        )
    return out


def _svg_bars(tl: Timeline, ax: _Axes) -> list[str]:
    out = []
    stacked: dict[float, float] = {}
    width = max(0.5, ax.x(tl.bucket_s) - ax.x(0))
    for t, leader, value in tl.committed:
        below = stacked.get(t, 0.0)
        stacked[t] = below + value
        top, bottom = ax.y(below + value), ax.y(below)
        out.append(
            f'<rect x="{ax.x(t) - width:.1f}" y="{top}" width="{width:.1f}" '
            f'height="{max(0.0, bottom - top):.1f}" fill="{_color(leader)}" fill-opacity="0.85"/>'
        )
    return out


def _svg_published(tl: Timeline, ax: _Axes) -> str:
    if not tl.published:
        return ""
    points = " ".join(f"{ax.x(t)},{ax.y(v)}" for t, v in tl.published)
    return f'<polyline points="{points}" fill="none" stroke="#222" stroke-width="1.2"/>'


def _svg_faults(tl: Timeline, ax: _Axes) -> list[str]:
    out = []
    for i, (kind, t) in enumerate(tl.faults):
        x = ax.x(t)
        out.append(
            f'<line x1="{x}" y1="{ax.y1}" x2="{x}" y2="{ax.y0}" stroke="#c0392b" '
            f'stroke-dasharray="4 3"/><text x="{x + 3}" y="{ax.y1 + 26 + 12 * (i % 3)}" '
            f'fill="#c0392b">{html.escape(kind)}</text>'
        )
    return out


def _svg_leaders(tl: Timeline, ax: _Axes) -> list[str]:
    y = ax.y0 + 22
    out = [f'<text x="{ax.x0 - 6}" y="{y + 9}" text-anchor="end">leader</text>']
    for start, end, name in tl.leaders:
        out.append(
            f'<rect x="{ax.x(start)}" y="{y}" width="{max(0.5, ax.x(end) - ax.x(start)):.1f}" '
            f'height="10" fill="{_color(name)}"><title>{html.escape(name)}</title></rect>'
        )
    return out


def _svg_grid(ax: _Axes) -> list[str]:
    out = [
        f'<line x1="{ax.x0}" y1="{ax.y0}" x2="{ax.x1}" y2="{ax.y0}" stroke="#333"/>',
        f'<text x="{(ax.x0 + ax.x1) / 2}" y="{_PLOT_H - 8}" text-anchor="middle">'
        f"seconds since the first publish (rates: trailing {RATE_WINDOW_S:g}-s averages)</text>",
        f'<text x="14" y="{(ax.y0 + ax.y1) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(ax.y0 + ax.y1) / 2})">rows/s</text>',
    ]
    for i in range(6):
        v = ax.ymax * i / 5
        out.append(
            f'<text x="{ax.x0 - 6}" y="{ax.y(v) + 4}" text-anchor="end">{v:,.0f}</text>'
            f'<line x1="{ax.x0}" y1="{ax.y(v)}" x2="{ax.x1}" y2="{ax.y(v)}" stroke="#ddd"/>'
        )
    step = _nice_ceiling(ax.tmax / 12)
    for i in range(int(ax.tmax / step) + 1):
        out.append(
            f'<text x="{ax.x(i * step)}" y="{ax.y0 + 14}" text-anchor="middle">{i * step:g}</text>'
        )
    return out


def _svg_legend(tl: Timeline) -> list[str]:
    names = sorted({leader for _, leader, _ in tl.committed} | {n for *_, n in tl.leaders})
    items = [(f"committed while {n} leads", _color(n)) for n in names]
    items += [("published", "#222"), ("fault", "#c0392b")]
    out: list[str] = []
    x = float(_LEFT)
    for label, color in items:
        out.append(
            f'<rect x="{x}" y="28" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="38">{html.escape(label)}</text>'
        )
        x += 24 + 6.5 * len(label)
    return out


def write_plot(path: Path, report: BenchReport, table: str) -> None:
    title = (
        f"aupus-ha bench: committed rows/s by leader, {report.machine.get('cpus')} CPUs, "
        f"{report.settings.get('equipment')} equipment"
    )
    svg = render_svg(report.timeline, title)
    if path.suffix.lower() == ".svg":
        path.write_text(svg + "\n")
        return
    path.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>aupus-ha bench</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}</style></head>"
        f"<body>\n{svg}\n<pre>{html.escape(table)}</pre>\n</body></html>\n"
    )
