"""A line chart as a PNG, in pure Python, for markdown artifacts.

Prefect's UI sanitizes inline SVG in markdown down to an empty box, and image artifacts need a public
URL; a PNG data URI in markdown (`![...](data:image/png;base64,...)`) is what the UI shows. Drawing
a few hundred points needs no plotting library: lines on an RGB raster, written with zlib.
"""

from __future__ import annotations

import base64
import struct
import zlib

Color = tuple[int, int, int]
BACKGROUND: Color = (255, 255, 255)
GRID: Color = (225, 225, 225)
AXIS: Color = (120, 120, 120)


def line_chart_png(series: list[tuple[list[tuple[float, float]], Color]], width: int = 600, height: int = 300,
                   margin: int = 12) -> bytes:
    """Each series is (points, colour); both axes span the points of all series. Horizontal grid
    lines at quarters of the y range, axes on the left and bottom."""
    pixels = bytearray(bytes(BACKGROUND) * (width * height))
    pts = [p for points, _ in series for p in points]
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    left, right, top, bottom = margin, width - margin, margin, height - margin

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (right - left) * (x - x0) / ((x1 - x0) or 1),
                bottom - (bottom - top) * (y - y0) / ((y1 - y0) or 1))

    for q in range(1, 5):
        y = top + (bottom - top) * q / 4
        _line(pixels, width, height, (left, y), (right, y), GRID, 0)
    _line(pixels, width, height, (left, top), (left, bottom), AXIS, 0)
    _line(pixels, width, height, (left, bottom), (right, bottom), AXIS, 0)
    for points, color in series:
        for a, b in zip(points, points[1:]):
            _line(pixels, width, height, px(*a), px(*b), color, 1)
    return _png(pixels, width, height)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _line(pixels: bytearray, width: int, height: int, a: tuple[float, float], b: tuple[float, float],
          color: Color, radius: int) -> None:
    """A segment sampled every half pixel, each sample a (2 radius + 1)-pixel square."""
    steps = max(1, int(2 * max(abs(b[0] - a[0]), abs(b[1] - a[1]))))
    rgb = bytes(color)
    for i in range(steps + 1):
        cx = round(a[0] + (b[0] - a[0]) * i / steps)
        cy = round(a[1] + (b[1] - a[1]) * i / steps)
        for y in range(max(0, cy - radius), min(height, cy + radius + 1)):
            for x in range(max(0, cx - radius), min(width, cx + radius + 1)):
                o = 3 * (y * width + x)
                pixels[o:o + 3] = rgb


def _png(pixels: bytearray, width: int, height: int) -> bytes:
    """8-bit RGB, no filter: a zero byte before each row."""
    stride = 3 * width
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
