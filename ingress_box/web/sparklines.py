"""Small charts as SVG coordinates, computed here so the page's script only copies strings.

A chart is a few series drawn on one shared scale in a ``WIDTH`` x ``HEIGHT`` view box: a line
(a polyline's ``points``) and the area under it (a polygon's ``points``) per series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

WIDTH = 300
HEIGHT = 60
PAD = 3  # keeps a stroke at the top or bottom edge inside the view box


def _coordinates(values: Sequence[int], top: int) -> list[tuple[float, float]]:
    step = WIDTH / max(len(values) - 1, 1)
    usable = HEIGHT - 2 * PAD
    return [
        (round(i * step, 1), round(HEIGHT - PAD - usable * v / top, 1))
        for i, v in enumerate(values)
    ]


def _points(coordinates: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:g},{y:g}" for x, y in coordinates)


def chart(series: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """``{"max": n, "last": {name: v}, "series": {name: {"line": pts, "area": pts}}}``."""
    top = max((max(values, default=0) for values in series.values()), default=0)
    scale = top or 1  # an idle hour is a flat line at the bottom, not a division by zero
    drawn: dict[str, dict[str, str]] = {}
    for name, values in series.items():
        coordinates = _coordinates(values, scale)
        floor = [(coordinates[-1][0], float(HEIGHT)), (0.0, float(HEIGHT))] if coordinates else []
        drawn[name] = {"line": _points(coordinates), "area": _points(coordinates + floor)}
    last = {name: (values[-1] if values else 0) for name, values in series.items()}
    return {"max": top, "last": last, "series": drawn}
