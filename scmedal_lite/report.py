"""A small, self-contained HTML report of executed notebooks: one page per notebook and an index page.

Uses ``nbconvert``'s HTML exporter when it is installed; otherwise a built-in renderer (markdown through
``markdown-it-py``, code highlighted with ``pygments`` when available, images embedded). Both give pages
that open from disk without a server or internet.

Example
-------
>>> from scmedal_lite import report
>>> report.write_report(["run/notebooks/00_quickstart.ipynb"], "run/report")  # doctest: +SKIP
'run/report/index.html'
"""

from __future__ import annotations

import datetime
import html
import os
import re
from collections.abc import Mapping, Sequence

import nbformat

from .io import write_text

__all__ = ["render_notebook", "write_report", "notebook_title"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.5; }
pre { background: #f6f8fa; padding: .6em .8em; overflow-x: auto; font-size: 85%; border-radius: 4px; }
pre.out { background: #fff; border-left: 3px solid #ddd; }
pre.err { background: #fff0f0; border-left: 3px solid #d33; }
.cell { margin: 1em 0; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 85%; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
nav a { margin-right: 1em; }
.ok { color: #080; } .failed { color: #c00; }
"""


def _md(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:                       # pragma: no cover - markdown-it-py ships with jupyter-book
        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def _code(source: str) -> str:
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:                                   # pragma: no cover
        return f"<pre>{html.escape(source)}</pre>"
    return highlight(source, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=False))


def _output(out) -> str:
    kind = out.get("output_type")
    if kind == "stream":
        if out.get("name") == "stderr":                   # warnings and library logs: not part of the report
            return ""
        return f'<pre class="out">{html.escape(_ANSI.sub("", out.get("text", "")))}</pre>'
    if kind == "error":
        tb = _ANSI.sub("", "\n".join(out.get("traceback", [])))
        return f'<pre class="err">{html.escape(tb)}</pre>'
    data = out.get("data", {})
    if "image/png" in data:
        png = data["image/png"]
        png = "".join(png) if isinstance(png, list) else png
        return f'<img src="data:image/png;base64,{png.strip()}" alt="figure">'
    if "image/svg+xml" in data:
        svg = data["image/svg+xml"]
        return "".join(svg) if isinstance(svg, list) else svg
    if "text/html" in data:
        value = data["text/html"]
        return "".join(value) if isinstance(value, list) else value
    if "text/markdown" in data:
        value = data["text/markdown"]
        return _md("".join(value) if isinstance(value, list) else value)
    if "text/plain" in data:
        value = data["text/plain"]
        return f'<pre class="out">{html.escape("".join(value) if isinstance(value, list) else value)}</pre>'
    return ""


def notebook_title(nb) -> str:
    """The first markdown heading of a notebook (or "Notebook")."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return "Notebook"


def _builtin(nb, title: str) -> str:
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(f'<div class="cell md">{_md(cell.source)}</div>')
        elif cell.cell_type == "code":
            outs = "".join(_output(o) for o in cell.get("outputs", []))
            parts.append(f'<div class="cell code">{_code(cell.source)}{outs}</div>')
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><nav><a href=\"index.html\">&larr; report index</a></nav>"
            + "\n".join(parts) + "</body></html>\n")


def render_notebook(path: str, *, use_nbconvert: bool | None = None) -> str:
    """HTML of the executed notebook at ``path``: nbconvert's when installed (unless ``use_nbconvert=False``),
    else the built-in renderer's."""
    nb = nbformat.read(path, as_version=4)
    if use_nbconvert is not False:
        try:
            from nbconvert import HTMLExporter
        except ImportError:
            if use_nbconvert:
                raise
        else:
            body, _ = HTMLExporter().from_notebook_node(nb)
            return body
    return _builtin(nb, notebook_title(nb))


def write_report(notebooks: Sequence[str], out_dir: str, *, title: str = "scMEDAL report",
                 status: Mapping[str, str] | None = None, info: Mapping[str, object] | None = None,
                 tables: Mapping[str, str] | None = None) -> str:
    """Write one HTML page per notebook and ``index.html`` listing them, into ``out_dir``.

    ``status`` maps a notebook path to a short status (e.g. ``"ok, 42 s"``); ``info`` adds a key/value table
    (command, input, parameters); ``tables`` adds named HTML snippets (e.g. ``df.to_html()``) to the index.
    Each file is written atomically. Returns the path of ``index.html``.
    """
    os.makedirs(out_dir, exist_ok=True)
    status = dict(status or {})
    rows = []
    for path in notebooks:
        name = os.path.splitext(os.path.basename(path))[0]
        page = f"{name}.html"
        write_text(os.path.join(out_dir, page), render_notebook(path))
        nb_title = notebook_title(nbformat.read(path, as_version=4))
        state = status.get(path, "")
        cls = "failed" if "fail" in state else "ok"
        rows.append(f'<li><a href="{page}">{html.escape(name)}</a>: {html.escape(nb_title)} '
                    f'<span class="{cls}">{html.escape(state)}</span></li>')
    info_html = ""
    if info:
        info_html = "<h2>Run</h2><table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td style=\"text-align:left\">{html.escape(str(v))}</td></tr>"
            for k, v in info.items()) + "</table>"
    tables_html = "".join(f"<h2>{html.escape(k)}</h2>{v}" for k, v in (tables or {}).items())
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    index = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>Written {stamp}.</p>"
             f"<h2>Notebooks</h2><ul>{''.join(rows)}</ul>{tables_html}{info_html}</body></html>\n")
    index_path = os.path.join(out_dir, "index.html")
    write_text(index_path, index)
    return index_path
