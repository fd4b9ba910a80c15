"""The documentation site builds with warnings as errors (broken links, bad API references)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path, record_property):
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra")
    pytest.importorskip("mkdocstrings")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    seconds = time.perf_counter() - start
    record_property("docs_build_seconds", round(seconds, 1))
    print(f"mkdocs build --strict: {seconds:.1f} s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "quickstart/index.html", "plugins/index.html", "porting/index.html",
                 "reference/api/index.html"):
        assert (site / page).exists(), page
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "Explainer" in api and "each:topk:K" in api  # generated from the docstrings


def test_license_is_bsd_2_clause():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("BSD 2-Clause License") and "lrpflow developers" in text
    assert 'license = { text = "BSD-2-Clause" }' in (REPO / "pyproject.toml").read_text()
