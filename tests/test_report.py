"""HTML reports: built from a run / sweep directory, checked in headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them) and selenium; it is skipped where no browser is installed, except under CI=true
where a missing browser fails the test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy
import pytest

from lrpflow.curve_store import read_curves
from lrpflow.report import write_run_report, write_sweep_report

SCREENSHOTS = Path(os.environ.get("LRPFLOW_SCREENSHOTS", "")) if os.environ.get("LRPFLOW_SCREENSHOTS") else None


def _run(args, cwd, flags=()):
    cmd = [sys.executable, "-c", "from lrpflow.cli import main; main()", *flags, "progress=false", "data.stop=1677",
           "render.max_images=3", *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One default run (bundled digits, LRP-ε, 80 samples)."""
    root = tmp_path_factory.mktemp("report")
    out = _run([f"hydra.run.dir={root / 'run'}"], root)
    assert "outputs in" in out.stderr  # the final summary line says where the outputs are
    return root / "run"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    _run([f"hydra.sweep.dir={root / 'sweep'}", "lrp.epsilon=0.001,10", "data.stop=1637", "render.max_images=2"], root,
         flags=["-m"])
    return root / "sweep"


def test_run_report_files(run_dir):
    html = (run_dir / "report.html").read_text()
    for needle in ("pixel_flipping", "conservation", "AOPC", "higher is better", "heatmap_grid.png",
                   'class="chart"', "conservation ledger per layer", "perturbation curve (80 samples)",
                   "model_sha256", "Config"):
        assert needle in html, needle
    assert "<svg" in html and html.count("<svg") == 2 and not (run_dir / "report_files").exists()  # inline, no PNGs
    with h5py.File(run_dir / "results.h5", "r") as f:  # the ledger table: shares of R_init, input → output
        nodes = [n.decode() if isinstance(n, bytes) else str(n) for n in f["ledger"].attrs["nodes"]]
        entering, leaving = f["ledger/entering"][()], f["ledger/leaving"][()]
    r_init = entering[:, :1]  # the first ledger node is the output
    table = html[html.index('<table class="ledger">'):]
    for k in range(len(nodes)):
        share = numpy.mean(entering[:, k] / r_init[:, 0])
        absorbed = numpy.mean((entering[:, k] - leaving[:, k]) / r_init[:, 0])
        assert f"<td>{nodes[k]}</td><td>{share:.4g}</td><td>{absorbed:.4g}</td>" in table, nodes[k]
    assert table.index(f"<td>{nodes[-1]}</td>") < table.index(f"<td>{nodes[0]}</td>")  # input first
    index = json.loads((run_dir / "samples.json").read_text())
    assert index["outline"] is True  # digits: sparse edges, outlines drawn (outline=auto)
    samples = index["samples"]
    assert [s["row"] for s in samples] == [1597, 1598, 1599]
    for s in samples:
        page = run_dir / "samples" / f"{s['name']}.html"
        text = page.read_text()
        for kind in ("input", "heatmap", "overlay"):
            assert f"../{s[kind]}" in text and (run_dir / s[kind]).exists()
    with h5py.File(run_dir / "results.h5", "r") as f:  # the full perturbation curve is in the store
        curve = f["metrics/pixel_flipping_curve"]
        assert curve.shape == (80, 21) and numpy.isfinite(curve[()]).all()
        numpy.testing.assert_allclose(curve[:, 0] - curve[()].mean(axis=1), f["metrics/pixel_flipping"][()],
                                      rtol=1e-5, atol=1e-5)  # AOPC is the mean drop of the stored curve
    (curves, fractions), = read_curves(run_dir / "results.h5").values()  # with the fractions of the store's attrs
    assert curves.shape == (80, 21)
    numpy.testing.assert_allclose(fractions[-1], 0.2, atol=0.01)


def test_run_report_rebuilds_from_the_directory(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    assert write_run_report(copy) == str(copy / "report.html") and (copy / "report.html").exists()


def test_sweep_report_rows_and_best(sweep_dir):
    html = (sweep_dir / "report.html").read_text()
    assert html.count('data-job="') == 2
    assert html.count('class="best"') == 1
    summary = [json.loads((sweep_dir / j / "summary.json").read_text())["objective"] for j in "01"]
    best = int(numpy.argmax(summary))
    assert f'class="best" data-job="{best}"' in html
    assert write_sweep_report(sweep_dir).endswith("report.html")


# -- in a real browser ---------------------------------------------------------------------

def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium/chromedriver are missing (.ci/run installs them)")
        pytest.skip("no chromium + chromedriver installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600"):
        opts.add_argument(flag)
    import tempfile

    profile = tempfile.mkdtemp(prefix="lrpflow-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(chromedriver), options=opts), profile


@pytest.fixture(scope="module")
def browser():
    driver, profile = _driver()
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _broken_images(driver):
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);")


def test_run_report_in_chromium(browser, run_dir, tmp_path):
    browser.get((run_dir / "report.html").as_uri())
    assert browser.title.startswith("lrpflow run")
    assert browser.execute_script("return document.images.length") >= 4  # grid + 3 thumbnails
    assert _broken_images(browser) == []
    charts = browser.execute_script(  # the two inline SVG charts are laid out with their drawn marks
        "return Array.from(document.querySelectorAll('svg.chart')).map(s => [s.getBoundingClientRect().width, "
        "s.querySelectorAll('circle').length, s.querySelectorAll('rect').length]);")
    assert len(charts) == 2 and all(w > 300 and c > 0 and r > 0 for w, c, r in charts), charts
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#metrics-table tbody tr')).map(r => r.dataset.metric);")
    assert rows == ["conservation", "pixel_flipping"]
    # sorting: click "mean" twice (ascending, then descending) and read the order back
    header = browser.find_element("xpath", "//table[@id='metrics-table']//th[text()='mean']")
    means = "return Array.from(document.querySelectorAll('#metrics-table tbody tr')).map(r => r.cells[1].dataset.value);"
    header.click()
    up = [float(v) for v in browser.execute_script(means)]
    header.click()
    down = [float(v) for v in browser.execute_script(means)]
    assert up == sorted(up) and down == sorted(up, reverse=True) and up != down
    shot = (SCREENSHOTS or tmp_path) / "report_run.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    # a per-sample page: input, heatmap and overlay all load
    first = json.loads((run_dir / "samples.json").read_text())["samples"][0]
    browser.get((run_dir / "samples" / f"{first['name']}.html").as_uri())
    assert browser.execute_script("return document.images.length") == 3 and _broken_images(browser) == []


def test_sweep_report_in_chromium(browser, sweep_dir, tmp_path):
    browser.get((sweep_dir / "report.html").as_uri())
    assert _broken_images(browser) == []
    jobs = "return Array.from(document.querySelectorAll('#jobs-table tbody tr')).map(r => r.dataset.job);"
    assert sorted(browser.execute_script(jobs)) == ["0", "1"]
    header = browser.find_element("xpath", "//table[@id='jobs-table']//th[text()='lrp.epsilon']")
    header.click()
    eps = "return Array.from(document.querySelectorAll('#jobs-table tbody tr')).map(r => parseFloat(r.cells[1].dataset.value));"
    assert browser.execute_script(eps) == [0.001, 10.0]
    header.click()
    assert browser.execute_script(eps) == [10.0, 0.001]
    shot = (SCREENSHOTS or tmp_path) / "report_sweep.png"
    assert browser.save_screenshot(str(shot))
