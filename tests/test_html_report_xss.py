"""No string from a results folder can run script in the report pages (review cases 55-57).

Each experiment gets a hand-written store (manifest.json + results.jsonl) in which every string
that reaches the page -- category, concept, model name and path, condition names, compared run,
replies, the grader's name -- holds ``</script><img onerror=...>``, ``<!--``, ``<script>`` and
U+2028/U+2029. The pages are then rendered in headless Chromium: no payload may set its
attribute, no JavaScript error may happen, and every figure must render.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from browser import render_page
from introspect_mech.html_report import script_json
from introspect_mech.plots import browser_path

def browser(test):
    """A test that renders a page in headless Chromium: the browser tier, skipped where Chromium is missing."""
    needs = pytest.mark.skipif(browser_path() is None, reason="needs Chromium (installed by `make install`)")
    return pytest.mark.browser(needs(test))


def P(field: str) -> str:
    """A payload that, if it ever ran, would mark <body data-pwned="XSS-field">."""
    mark = f"XSS-{field}"
    return (f"{field} </script><img src=x onerror=document.body.setAttribute('data-pwned','{mark}')>"
            f"<!--\u2028<script>document.body.setAttribute('data-pwned','{mark}')</script>\u2029"
            f"<svg onload=document.body.setAttribute('data-pwned','{mark}')>&amp;")


_FILL = {"prompt_key": "default", "sample": 0, "extra": {}, "concept": None, "category": None, "layer": None,
         "strength": None, "dose": None, "prompt": "q", "sentence": "s", "task": "word", "word": "w",
         "template": "think", "prefilled_word": "w"}


def _complete(rec: dict) -> dict:
    """Give a hand-written record every field its experiment declares (its spec's record), keeping what it sets."""
    from introspect_mech.experiments import registry
    from introspect_mech.records import record_fields

    need = [k for k, (_, required) in record_fields(registry.get(rec["experiment"]).record).items() if required]
    return {**{k: _FILL[k] for k in need if k in _FILL and k not in rec}, **rec}


def _write_run(folder: Path, manifest: dict, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "results.jsonl").write_text("".join(json.dumps(_complete(r)) + "\n" for r in records))
    return folder


def _model(field_name: str, path: Path | str, n_layers: int = 4) -> dict:
    return {"name": P(field_name), "source": f"path:{path}", "n_layers": n_layers, "fingerprint": "f"}


def _exp1(tmp: Path) -> Path:
    recs = []
    for layer in (1, 2):
        for strength in (2.0, 4.0):
            for cat, concept in ((P("category"), P("concept")), ("plain", "dust")):
                for k in range(2):
                    recs.append({"trial_id": f"i{layer}{strength}{cat[:4]}{k}", "experiment": "injected_thoughts",
                                 "condition": "injected", "layer": layer, "strength": strength, "concept": concept,
                                 "category": cat, "prompt": P("prompt"), "dose": 1.5,
                                 "response": P("response") + " I detect an injected thought about dust."})
            recs.append({"trial_id": f"r{layer}{strength}", "experiment": "injected_thoughts",
                         "condition": "random_vector", "layer": layer, "strength": strength, "concept": None,
                         "category": None, "prompt": "q", "dose": 1.0, "response": "No."})
    for k in range(3):
        recs.append({"trial_id": f"c{k}", "experiment": "injected_thoughts", "condition": "control", "layer": None,
                     "strength": None, "concept": None, "category": None, "prompt": "q", "response": "No."})
    recs.append({"trial_id": "x", "experiment": "injected_thoughts", "condition": P("condition"), "layer": 1,
                 "strength": 2.0, "concept": "dust", "category": "plain", "prompt": "q", "response": "No."})
    return _write_run(tmp / "exp1", {"experiment": "injected_thoughts", "model": _model("model-name", P("model-path")),
                                     "config": {"concepts": [P("concept")]}}, recs)


def _exp2(tmp: Path, model_dir: Path) -> Path:
    recs = []
    cands = [P("candidate"), "ocean", "dog"]
    for i, (cond, layer, strength) in enumerate([("injected", 1, 4.0), ("injected", 2, 4.0), ("clean", None, None),
                                                 (P("condition"), 1, 4.0)]):
        for s in range(2):
            base = {"experiment": "thoughts_vs_text", "condition": cond, "layer": layer, "strength": strength,
                    "concept": P("candidate"), "candidates": cands, "sentence": P("sentence"),
                    "extra": {"sentence_index": s}}
            recs.append({**base, "trial_id": f"w{i}{s}", "task": "word", "response": P("response")})
            recs.append({**base, "trial_id": f"r{i}{s}", "task": "repeat", "response": P("sentence")})
    return _write_run(tmp / "exp2", {"experiment": "thoughts_vs_text", "model": _model("model-name", model_dir),
                                     "config": {"n_choices": 3}}, recs)


def _exp3(tmp: Path) -> Path:
    recs = []
    conds = [("no_injection", None, None), ("matching_concept", 1, 4.0), ("matching_concept", 2, 4.0),
             ("random_other_concept", 1, 4.0), ("random_other_concept", 2, 4.0), (P("condition"), 1, 4.0),
             (P("condition"), 2, 4.0)]
    for i, (cond, layer, strength) in enumerate(conds):
        for pair in range(3):
            recs.append({"trial_id": f"p{i}{pair}", "experiment": "prefill_intent", "condition": cond, "layer": layer,
                         "strength": strength, "prefilled_word": P("prefilled-word"), "extra": {"pair": pair},
                         "response": P("response") + (" Sorry, that was an accident." if pair else " I meant it."),
                         "intent_logodds": 0.1 * pair - 0.2 * i})
    return _write_run(tmp / "exp3", {"experiment": "prefill_intent", "model": _model("model-name", P("model-path")),
                                     "config": {}}, recs)


def _exp4_records(templates: list[str], n_layers: int = 4) -> list[dict]:
    recs = []
    for t, name in enumerate(templates):
        for pair in range(3):
            recs.append({"trial_id": f"{t}-{pair}", "experiment": "intentional_control", "condition": name,
                         "extra": {"pair": pair}, "response": None,
                         "cos_target": [0.1 * (L + 1) / (t + 1) + 0.01 * pair for L in range(n_layers)],
                         "cos_control_mean": [0.05 + 0.001 * pair] * n_layers,
                         "cos_control_sd": [0.07] * n_layers})
    return recs


def _exp4(tmp: Path) -> tuple[Path, Path]:
    main = _write_run(tmp / "exp4", {"experiment": "intentional_control",
                                     "model": _model("model-name", P("model-path")), "config": {}},
                      _exp4_records(["think", "dont_think", P("condition")]))
    # A compared run without a model name: it is drawn under its folder's path.
    other = _write_run(tmp / "compare" / P("compared-run"), {"experiment": "intentional_control",
                                                             "model": {"n_layers": 4}, "config": {}},
                       _exp4_records(["think", "dont_think"]))
    return main, other


# Which payloads must reach each report page (so that the test is not vacuous).
REACHES = {
    "injected_thoughts": ["category", "concept", "model-name", "model-path", "response", "grader"],
    "thoughts_vs_text": ["model-name", "model-path", "condition"],
    "prefill_intent": ["model-name", "model-path", "condition"],
    "intentional_control": ["model-name", "model-path", "condition", "compared-run"],
}


def _judge_server():
    """A local OpenAI-compatible judge that answers YES to everything."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"choices": [{"message": {"content": "YES"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    from conftest import build_tiny_hf, make_tiny_tokenizer
    from introspect_mech.report import write_report

    tmp = tmp_path_factory.mktemp("xss")
    model_dir = tmp / "models" / P("model-path")  # a real model folder whose path holds the payload
    tok = make_tiny_tokenizer()
    build_tiny_hf("llama", tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    server = _judge_server()
    out: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as mp:
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            mp.delenv(var, raising=False)
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        mp.setenv("OPENAI_API_KEY", "sk-test")
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out["injected_thoughts"] = Path(write_report(_exp1(tmp), grader="openai:" + P("grader"), judge_url=url,
                                                     png=False)["html"])
    server.shutdown()
    server.server_close()
    out["thoughts_vs_text"] = Path(write_report(_exp2(tmp, model_dir), png=False)["html"])
    out["prefill_intent"] = Path(write_report(_exp3(tmp), png=False)["html"])
    main, other = _exp4(tmp)
    out["intentional_control"] = Path(write_report(main, png=False, compare=[other])["html"])
    return out


@pytest.mark.parametrize("exp", sorted(REACHES))
def test_every_payload_reaches_the_page_only_as_inert_text(reports, exp):
    page = reports[exp].read_text(encoding="utf-8")
    for field in REACHES[exp]:
        assert f"XSS-{field}" in page, f"the {field} payload never reached the {exp} page: the test would be vacuous"
    assert "<img src=x" not in page and "<svg onload" not in page and "<!--" not in page
    # Every script element is either plotly.js, our error hook, the escaped specs, or the loader.
    assert page.count("</script>") == 4


@pytest.mark.parametrize("exp", sorted(REACHES))
def test_every_html_file_of_the_run_escapes_the_payloads(reports, exp):
    """Also the per-figure pages (plotly's own HTML) and the transcripts page."""
    pages = list(reports[exp].parent.rglob("*.html"))
    assert len(pages) >= 2
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert "<img src=x" not in text and "<svg onload" not in text, p


@browser
@pytest.mark.parametrize("exp", sorted(REACHES))
def test_no_payload_runs_and_every_figure_renders(reports, exp):
    """Cases 55-57: payloads in replies, categories, model names/paths and compared runs run no script."""
    page = reports[exp]
    n_figs = page.read_text(encoding="utf-8").count("class='fig'")
    assert n_figs >= 1
    r = render_page(page)
    assert r.returncode == 0
    assert r.attr("data-pwned") == [], f"injected script ran: {r.attr('data-pwned')}"
    assert r.attr("data-js-errors") == [""], r.attr("data-js-errors")
    assert not [c for c in r.console if "error" in c.lower() or "Uncaught" in c]
    assert len(r.attr("data-rendered")) == n_figs, "some figures did not render"
    assert r.dom.count("main-svg") >= n_figs


@browser
def test_the_transcripts_page_runs_no_payload(reports):
    page = reports["injected_thoughts"].parent / "figures" / "exp1_transcripts.html"
    text = page.read_text(encoding="utf-8")
    assert "XSS-response" in text and "XSS-concept" in text
    r = render_page(page, wait_ms=2000)
    assert r.returncode == 0 and r.attr("data-pwned") == []


def test_script_json_leaves_nothing_that_ends_a_script():
    s = {"a": "</script><!--<script>\u2028\u2029&", "b": [float("nan"), 1.5, float("inf")], "c": "\ud800"}
    text = script_json(s)
    assert not set(text) & set("<>&\u2028\u2029")
    assert text.isascii()
    assert json.loads(text) == {"a": s["a"], "b": [None, 1.5, None], "c": "\ud800"}


def test_transcripts_page_escapes_every_field_and_takes_missing_replies():
    from introspect_mech.plots import transcripts_page

    recs = [{"concept": P("concept"), "layer": 3, "response": P("response")}, {"concept": "dust", "response": None},
            {"concept": "dust", "response": 7}]
    page = transcripts_page({P("outcome"): recs}, title=P("title"), fields=("concept", "layer"))
    assert "<img src=x" not in page and "<script>" not in page and "<!--" not in page
    assert "XSS-response" in page and "XSS-concept" in page and "XSS-title" in page and ">7<" in page
