"""Charts as PNG images for markdown artifacts, drawn with matplotlib.

Prefect's UI sanitizes inline SVG in markdown down to an empty box, and image artifacts need a public
URL; a PNG data URI in markdown (`![...](data:image/png;base64,...)`) is what the UI shows.
"""

from __future__ import annotations

import base64
import io

Points = list[tuple[float, float]]


def line_chart_png(series: list[tuple[str, Points]], xlabel: str, ylabel: str, title: str = "") -> bytes:
    return png_of(line_chart(series, xlabel, ylabel, title))


def line_chart(
    series: list[tuple[str, Points]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    width_in: float = 8.0,
    height_in: float = 4.0,
    dpi: int = 100,
):
    """A matplotlib Figure: one line per (label, points) series, with labelled axes, a grid and a
    legend; short series get markers, so a single evaluation still shows."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the flow runs in a worker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    ax = fig.add_subplot()
    for label, points in series:
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, linewidth=1.2, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(points for _, points in series):
        ax.legend()
    fig.tight_layout()
    return fig


def png_of(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
