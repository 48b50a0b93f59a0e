"""The loss curve: a PNG of every logged train loss and every validation loss, with labelled axes
(that the UI shows it is tests/test_browser.py's part)."""

from __future__ import annotations

import base64
import io

from flows.chart import line_chart
from flows.training import loss_chart


def _image(png: bytes):
    import matplotlib.image

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(png), format="png")  # height x width x RGBA, floats


def test_chart_has_labelled_axes_and_one_line_per_series():
    fig = line_chart(
        [("train", [(s, 5 - s / 100) for s in range(1, 601)]), ("validation", [(100, 4.2), (600, 0.9)])], "step", "loss"
    )
    [ax] = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss")
    lines = {line.get_label(): line.get_xydata() for line in ax.get_lines()}
    assert len(lines["train"]) == 600 and lines["validation"].tolist() == [[100, 4.2], [600, 0.9]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]


def test_loss_chart_embeds_every_logged_step_as_a_png_data_uri():
    history = [
        {"step": s, "loss": 5 - s / 100, **({"val_loss": 5.1 - s / 100} if s % 50 == 0 else {})} for s in range(1, 601)
    ]
    md = loss_chart(history)
    uri = md.split("](data:image/png;base64,", 1)[1].split(")", 1)[0]
    image = _image(base64.b64decode(uri))
    assert image.shape[:2] == (400, 800)
    colours = {tuple(round(float(c) * 255) for c in px[:3]) for row in image[::4] for px in row[::4]}
    assert len(colours) > 10  # lines, text and the grid, not a blank image
    assert "600 train and 12 validation points" in md
    assert "| 600 |" in md and md.count("\n| ") <= 40  # every evaluation, about 20 rows in all
