"""The loss curve's PNG: a valid image of the asked size with the series drawn in their colours
(that the UI shows it is tests/test_browser.py's part)."""

from __future__ import annotations

import base64
import struct
import zlib

from flows.chart import line_chart_png
from flows.training import _loss_chart


def _decode(png: bytes) -> tuple[int, int, bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    return width, height, zlib.decompress(png[41:41 + idat_len])


def test_png_has_the_size_and_the_colours_of_its_series():
    blue, orange = (70, 130, 180), (255, 140, 0)
    width, height, raw = _decode(line_chart_png([([(0, 1.0), (10, 0.0)], blue), ([(0, 0.5), (10, 0.5)], orange)],
                                                width=200, height=100))
    assert (width, height) == (200, 100) and len(raw) == height * (1 + 3 * width)
    rows = [raw[y * (1 + 3 * width) + 1:(y + 1) * (1 + 3 * width)] for y in range(height)]
    colours = {tuple(row[x:x + 3]) for row in rows for x in range(0, 3 * width, 3)}
    assert {blue, orange, (255, 255, 255)} <= colours
    middle = rows[height // 2]
    assert tuple(middle[3 * (width // 4):3 * (width // 4) + 3]) == orange  # the flat series crosses the middle


def test_loss_chart_embeds_the_png_as_a_data_uri():
    history = [{"step": s, "loss": 5 - s / 100, **({"val_loss": 5.1 - s / 100} if s % 50 == 0 else {})}
               for s in range(1, 201)]
    md = _loss_chart(history)
    uri = md.split("](data:image/png;base64,", 1)[1].split(")", 1)[0]
    assert _decode(base64.b64decode(uri))[:2] == (600, 300)
    assert "| 200 |" in md and md.count("\n| ") <= 30  # every evaluation, about 20 rows in all
