"""The command line as a user meets it: --help, --version, lrpflow-info NAME, quiet logs."""
from __future__ import annotations

import subprocess
import sys

import lrpflow

MAIN = "from lrpflow.cli import main; main()"
INFO = "from lrpflow.cli import info; raise SystemExit(info())"


def _py(code, *args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_help_starts_with_what_lrpflow_does():
    out = _py(MAIN, "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"lrpflow {lrpflow.__version__} - Layer-wise Relevance Propagation")
    head = text[: text.index("Hydra's own flags")]
    for group in ("backend:", "data:", "lrp:", "model:", "render:", "evaluate:", "experiment:"):
        assert f"\n{group}" in head, group
    assert head.count("\n  lrpflow ") == 3  # three examples
    assert "lrpflow-info NAME" in head and "report.html" in head


def test_version_is_lrpflow_s():
    out = _py(MAIN, "--version")
    assert out.returncode == 0 and out.stdout.startswith(f"lrpflow {lrpflow.__version__} (Hydra ")


def test_info_name_shows_parameters_defaults_and_docstring():
    out = _py(INFO, "gamma")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gamma (rule, plugin lrpflow.rules)")
    assert "  parameters:\n" in out.stdout and "gamma: default 0.25" in out.stdout and "LRP-γ" in out.stdout
    comp = _py(INFO, "epsilon_gamma_box").stdout
    assert "(composite" in comp and "low:" in comp and "high:" in comp
    reader = _py(INFO, "--kind", "model_readers", "toolbox_txt").stdout
    assert reader.startswith("toolbox_txt (model_reader") and "suffixes: .txt" in reader
    step = _py(INFO, "save").stdout
    assert step.startswith("save (step, plugin lrpflow.steps)")
    missing = _py(INFO, "epsilonn")
    assert missing.returncode == 2 and "did you mean epsilon" in missing.stderr and not missing.stdout


def test_listing_still_works():
    out = _py(INFO, "--kind", "metrics")
    assert out.returncode == 0 and "pixel_flipping" in out.stdout and "metrics (" in out.stdout


def test_run_logs_one_line_per_phase_and_where_the_outputs_are(tmp_path):
    run = tmp_path / "run"
    out = _py(MAIN, f"hydra.run.dir={run}", "data.stop=1629", "render.max_images=4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert all(line.startswith("lrpflow: ") for line in lines), lines
    assert len(lines) <= 8 and not any("wrote" in line for line in lines)  # not one line per PNG (24 PNGs here)
    assert lines[-1] == f"lrpflow: outputs in {run} (report: {run / 'report.html'})"
    assert "\r" not in out.stderr  # no progress bar where stderr is not a terminal
    log = (run / "lrpflow.log").read_text()
    assert "\r" not in log and "[INFO]" in log and "outputs in" in log
    assert (run / "report.html").exists() and len(list((run / "heatmaps").glob("*.png"))) == 4 * 5


def test_info_conventions_lists_every_convention_with_its_source():
    from lrpflow.conventions import ENTRIES

    out = _py(INFO, "conventions")
    assert out.returncode == 0
    for name, text in ENTRIES:
        assert f"{name}: {text.splitlines()[0]}" in out.stdout
    assert "norm" in out.stdout and "1e-16" in out.stdout
