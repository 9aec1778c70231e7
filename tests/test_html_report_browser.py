"""The per-run HTML report renders every figure in headless Chromium without JavaScript errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from browser import render_page
from introspect_mech.plots import browser_path

pytestmark = [pytest.mark.integration, pytest.mark.browser,
              pytest.mark.skipif(browser_path() is None, reason="needs Chromium (installed by `make install`)")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cmd = [sys.executable, "-m", "introspect_mech", "run", "injected-thoughts", "--layers", "0.5,0.67", "--strengths",
           "4,8", "--concepts", "dust,origami", "--control-trials", "3", "--controls", "control,random_vector",
           "--control-per-cell", "1", "--max-new-tokens", "8", "--no-progress", "--out", str(out)]
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    rep = subprocess.run([sys.executable, "-m", "introspect_mech", "report", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert rep.returncode == 0, rep.stderr
    return out


def test_report_renders_all_figures_without_errors(run_dir):
    page = run_dir / "report.html"
    assert page.exists()
    text = page.read_text()
    assert "http://" not in text.split("<script>", 2)[1][:200]  # plotly.js inlined, no CDN
    # the offline grader's success rates carry its measured recall/precision and a warning (issue 11)
    assert "WARNING: the success rates below come from the offline rule grader" in text
    assert "measured against reference labels" in text and "recall" in text
    n_figs = text.count("class='fig'")
    assert n_figs >= 5
    r = render_page(page)
    assert r.returncode == 0
    assert len(r.attr("data-rendered")) == n_figs, "some figures did not render"
    assert r.attr("data-js-errors") == [""], r.attr("data-js-errors")
    errors = [c for c in r.console if "error" in c.lower() or "Uncaught" in c]
    assert not errors, errors
    assert r.dom.count("main-svg") >= n_figs  # plotly drew an SVG per figure


def test_a_broken_page_is_detected(tmp_path):
    """The check above can fail: a page with a JS error is reported as such."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body data-js-errors=''><script>window.addEventListener('error',function(e){"
                   "document.body.setAttribute('data-js-errors',String(e.message));});</script>"
                   "<script>undefinedFunction();</script></body></html>")
    r = render_page(bad, wait_ms=2000)
    assert r.attr("data-js-errors") and "undefinedFunction" in r.attr("data-js-errors")[0]
