"""The report's inline SVG charts: ticks, marks, escaping, coordinates."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy
import pytest

from lrpflow.report.svg import _ticks, curve_svg, ledger_svg

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("lo, hi, expected", [(0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                              (-0.05, 1.05, [0.0, 0.5, 1.0]),
                                              (-3.2, 21.0, [0.0, 5.0, 10.0, 15.0, 20.0]),
                                              (-1e-17, 2e-3, [0.0, 5e-4, 1e-3, 1.5e-3, 2e-3])])
def test_ticks_are_round_and_cover_the_range(lo, hi, expected):
    ticks = _ticks(lo, hi)
    numpy.testing.assert_allclose(ticks, expected, rtol=1e-12, atol=1e-15)
    assert all(str(t) != "-0.0" for t in ticks)


def test_ledger_svg_marks_escaping_and_positions():
    nodes = ["in<put>", "conv & relu", "out"]
    svg = ledger_svg(nodes, [0.9, 1.0, 1.0], [0.1, 0.0, -0.5])
    root = ET.fromstring(svg)  # well-formed XML: the node names are escaped
    circles = root.findall(f"{NS}circle")
    assert len(circles) == 3 and [c.find(f"{NS}title").text for c in circles][0] == "in<put>: entering 0.9"
    bars = [r for r in root.findall(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert len(bars) == 3
    # y is linear in the value: the bar of −0.5 reaches 5× as far below the zero line as 0.1 reaches above it
    tops = [float(b.get("y")) for b in bars]
    heights = [float(b.get("height")) for b in bars]
    zero = tops[0] + heights[0]
    assert tops[2] == pytest.approx(zero, abs=0.11) and heights[2] == pytest.approx(5 * heights[0], rel=0.02)
    xs = [float(c.get("cx")) for c in circles]
    assert xs == sorted(xs) and xs[1] - xs[0] == pytest.approx(xs[2] - xs[1])


def test_curve_svg_mean_and_band():
    curves = numpy.array([[4.0, 2.0, 1.0], [2.0, 2.0, 0.0]])
    svg = curve_svg([0.0, 0.1, 0.2], curves, "eps", "logit")
    root = ET.fromstring(svg)
    tips = [c.find(f"{NS}title").text for c in root.findall(f"{NS}circle")]
    sem = numpy.std(curves, axis=0, ddof=1) / numpy.sqrt(2)
    assert tips == [f"0: 3 ± {sem[0]:.3g}", "0.1: 2 ± 0", f"0.2: 0.5 ± {sem[2]:.3g}"]
    band = root.find(f"{NS}polygon").get("points").split()
    assert len(band) == 6  # upper edge forth, lower edge back
    assert "2 samples" in root.find(f"{NS}title").text and re.search(r"mean ± standard error", svg)
