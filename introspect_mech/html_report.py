"""One self-contained HTML page per run: summary tables with CIs, every figure (interactive),
transcripts, and provenance.

Self-contained means no network: plotly.js is inlined once and every figure is embedded
as its plotly JSON spec. A small script records JavaScript errors into the page
(``data-js-errors`` on ``<body>``) so a headless browser test can assert that none
happened and that every figure rendered.

Everything on the page may come from a results folder someone else sent: category and concept
names, model names and paths, condition names, replies. Text goes through ``html.escape``;
figure specs go into a ``<script type="application/json">`` block, escaped by ``script_json``
so that no string in them can close the script element, and are read with ``JSON.parse``.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from .store import atomic_write_text

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1250px;margin:1.5em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.8em}
.fig{margin:1.5em 0;min-height:420px}.note{color:#555}
"""


_SCRIPT_UNSAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(obj: Any) -> str:
    """JSON text that is inert inside ``<script>``: no ``<``, ``>``, ``&``, U+2028 or U+2029 left.

    Why: the HTML parser ends a script at the first ``</script`` (and ``<!--`` changes how it
    looks for that end) whatever the JavaScript would make of it, so a string field holding
    ``</script><img onerror=...>`` would run as markup. The \\uXXXX escapes decode to the same
    characters in ``JSON.parse`` and in JavaScript literals.
    """
    return json.dumps(_finite(obj)).translate(_SCRIPT_UNSAFE)


def _finite(obj: Any) -> Any:
    """NaN and infinities as null, as plotly writes them: ``JSON.parse`` rejects the bare words."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def markdown_to_html(md: str) -> str:
    """Enough Markdown for our summaries: pipe tables and paragraphs."""
    out, table = [], []

    def flush():
        if not table:
            return
        rows = [r for r in table if not re.fullmatch(r"\|?[\s|:-]+\|?", r)]
        cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
        h = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
        out.append(f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>")
        table.clear()

    for line in md.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _body_of(page: str) -> str:
    m = re.search(r"<body>(.*)</body>", page, re.S)
    return m.group(1) if m else ""


def write_html_report(run_dir: Path, manifest: dict, table_md: str, figures: dict, extra_pages: dict | None = None,
                      grader: str | None = None, out_dir: Path | None = None) -> Path:
    from plotly.offline import get_plotlyjs

    specs = []
    for name, paths in figures.items():
        if isinstance(paths, dict) and paths.get("json") and Path(paths["json"]).exists():
            specs.append((name, json.loads(Path(paths["json"]).read_text())))
    exp = manifest.get("experiment", "?")
    model = manifest.get("model", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>introspect_mech report: {html.escape(exp)} — {html.escape(str(model.get('name')))}</title>",
        f"<style>{_CSS}</style>",
        "<script>window.__jsErrors=[];window.addEventListener('error',function(e){window.__jsErrors.push(String(e.message));"
        "document.body&&document.body.setAttribute('data-js-errors',window.__jsErrors.join(' | '));});</script>",
        f"<script>{get_plotlyjs()}</script></head><body data-js-errors=''>",
        f"<h1>{html.escape(exp)} — {html.escape(str(model.get('name')))}</h1>",
        f"<p class='note'>Run folder <code>{html.escape(str(run_dir))}</code>. Every number and figure below is "
        "recomputed from <code>results.jsonl</code> by <code>introspect-mech report</code>"
        + (f" (grader <code>{html.escape(grader)}</code>)" if grader else "") + ".</p>",
        "<h2>Summary (rates with 95% Wilson intervals)</h2>", markdown_to_html(table_md), "<h2>Figures</h2>",
    ]
    for i, (name, spec) in enumerate(specs):
        parts.append(f"<h3>{html.escape(name)}</h3><div class='fig' id='fig{i}' data-figure='{html.escape(name)}'></div>")
    parts.append("<script type='application/json' id='figure-specs'>" + script_json([s for _, s in specs])
                 + "</script>")
    parts.append("<script>var __specs=JSON.parse(document.getElementById('figure-specs').textContent);"
                 "__specs.forEach(function(s,i){Plotly.newPlot('fig'+i,s.data,s.layout,{responsive:true})"
                 ".then(function(){document.getElementById('fig'+i).setAttribute('data-rendered','1');});});</script>")
    for title, page in (extra_pages or {}).items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_body_of(page)}")
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(manifest, indent=1, sort_keys=True)) + "</pre>")
    parts.append("</body></html>")
    out = (out_dir or run_dir) / "report.html"
    atomic_write_text(out, "".join(parts))
    return out
