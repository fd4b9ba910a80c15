"""The figures of a run: labelled grids with colorbars, per-sample triples, outlines only where they help."""
from __future__ import annotations

import json

import numpy
import pytest

from lrpflow import render
from lrpflow.errors import ConfigError
from lrpflow.render.run_figures import class_names, render_run, sample_caption, wants_outline


def test_class_names_from_a_list_or_a_synset_file(tmp_path):
    f = tmp_path / "synset_words.txt"
    f.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n\nplain name\n")
    assert class_names(str(f)) == ["tench", "goldfish", "plain name"]
    assert class_names(["cat", "dog"]) == ["cat", "dog"] and class_names(None) is None
    with pytest.raises(ConfigError, match="not a file"):
        class_names(str(tmp_path / "missing.txt"))


def test_caption_names_pred_and_true():
    assert sample_caption("row 7", 1, 0, ["cat", "dog"]) == "row 7\npred 1 dog\ntrue 0 cat"
    assert sample_caption("img.png", 3, None) == "img.png\npred 3"
    assert sample_caption("row 1", 2, -1) == "row 1\npred 2"  # unknown label: no "true" line


def test_outline_auto_is_off_for_rgb_and_dense_edges(rng):
    digit = numpy.zeros((2, 8, 8, 1))
    digit[:, 2:6, 3:5] = 1.0  # a stroke: few edges
    assert wants_outline("auto", digit) and wants_outline("auto", digit.reshape(2, 64))
    assert not wants_outline("auto", rng.uniform(0, 1, (2, 32, 32, 1)))  # noise: a dense mesh of edges
    assert not wants_outline("auto", numpy.zeros((2, 8, 8, 3)))
    assert wants_outline(True, numpy.zeros((2, 8, 8, 3))) and not wants_outline(False, numpy.zeros((2, 8, 8, 1)))
    with pytest.raises(ConfigError, match="outline"):
        wants_outline("sometimes", numpy.zeros((1, 4, 4, 1)))


def test_column_titles_are_rounded_and_wrapped():
    assert render.column_title(["lrp.epsilon=0.0031622776601683794"]) == "epsilon=0.00316"
    assert render.column_title("lrp=alpha_beta lrp.alpha=2") == "lrp=alpha_beta\nalpha=2"
    long = render.column_title(["lrp.composite=epsilon_gamma_box_with_a_long_name"], width=16)
    assert all(len(line) <= 16 for line in long.split("\n")) and len(long.split("\n")) > 1


@pytest.mark.parametrize("overlay", [False, True])
def test_render_run_writes_labelled_figures(tmp_path, rng, overlay):
    x = rng.uniform(0, 1, (3, 12, 12, 3))
    rel = rng.normal(0, 1, (3, 12, 12, 3))
    files = render_run(x, rel, tmp_path, settings={"cmaps": ["blue_white_red", "gray-red"], "overlay": overlay},
                       rows=[5, 6, 7], pred=[1, 0, 1], true=[1, 1, -1], names=["cat", "dog"],
                       sources=["a/cat1.jpg", "b/dog.png", None], method="Epsilon")
    index = json.loads((tmp_path / "samples.json").read_text())
    assert index["outline"] is False and index["method"] == "Epsilon"  # RGB: no Canny mesh
    s = index["samples"]
    assert [e["name"] for e in s] == ["000005_cat1", "000006_dog", "000007"]
    assert s[0]["pred_name"] == "1 dog" and s[1]["true_name"] == "1 dog" and s[2]["true_name"] is None
    for e in s:
        for kind in ("input", "heatmap", "overlay"):
            assert (tmp_path / e[kind]).exists()
    assert len([f for f in files if "/heatmaps/" in f]) == 6
    import imageio.v3 as iio

    grid = iio.imread(tmp_path / "heatmap_grid.png")
    assert grid.shape[0] > 3 * 140 and grid.shape[1] > 3 * 140  # 3 rows, input + 2 colormaps, labels, colorbar
    # the colorbar strip under the heatmap columns: the default map's blue and red ends are drawn
    bottom = grid[-40:, :, :3].reshape(-1, 3).astype(int)
    assert ((bottom[:, 2] > 200) & (bottom[:, 0] < 60)).any() and ((bottom[:, 0] > 200) & (bottom[:, 2] < 60)).any()


def test_several_targets_draw_the_first(tmp_path, rng):
    x = rng.normal(0, 1, (2, 8, 8, 1))
    rel = rng.normal(0, 1, (2, 3, 8, 8, 1))
    render_run(x, rel, tmp_path, settings={"cmaps": ["gray-red"], "grid": False})
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 2 and not (tmp_path / "heatmap_grid.png").exists()
