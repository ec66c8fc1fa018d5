"""The Jupyter Book: it builds (notebooks executed in quick mode), every chapter page exists with its figures,
the API reference is generated, a rebuild comes from the execution cache, and a failing notebook fails the
build."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_notebooks import NOTEBOOKS, quick_env

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["00_quickstart", "01_batch_suppression", "02_random_effects", "03_genomap_projection",
            "04_classification"]

pytest.importorskip("jupyter_book")
yaml = pytest.importorskip("yaml")


def jupyter_book():
    script = Path(sys.executable).with_name("jupyter-book")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jupyter_book.cli.main"]


def build(source: Path, out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = jupyter_book() + ["build", str(source), "--path-output", str(out), *extra]
    return subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    env = quick_env(tmp_path_factory, "book_outputs")
    out = tmp_path_factory.mktemp("book")
    pre = subprocess.run([sys.executable, str(ROOT / "book" / "execute.py"), "--path-output", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=2400)     # as `make book` does
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    assert "[IPKernelApp]" not in pre.stderr and "I0000" not in pre.stderr, "kernel chatter goes to the logs"
    assert sorted(p.stem for p in (out / "_build" / "logs").glob("*.log")) == [p.stem for p in NOTEBOOKS]
    assert "00_quickstart.ipynb first (the shared model), 04_classification.ipynb beside it" in pre.stdout
    assert "3 more, 2 at a time in all" in pre.stdout
    done = re.findall(r"  (\d\d)_\w+\.ipynb: ok", pre.stdout)
    assert sorted(done) == ["00", "01", "02", "03", "04"]
    assert done.index("00") < min(done.index(c) for c in ("01", "02", "03")), "those load chapter 00's model"
    first = build(ROOT, out, env)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    second = build(ROOT, out, env, "--all")          # re-reads every page: notebooks come from the cache
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out / "_build" / "html", first, second


def test_config_files_at_root():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["execute"]["raise_on_error"] is True
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(config["sphinx"]["extra_extensions"])
    toc = (ROOT / "_toc.yml").read_text()
    for chapter in CHAPTERS:
        assert f"notebooks/{chapter}" in toc


@pytest.mark.slow
def test_every_chapter_has_its_figures(book):
    html, _, _ = book
    for chapter in CHAPTERS:
        page = html / "notebooks" / f"{chapter}.html"
        assert page.exists(), chapter
        text = page.read_text()
        images = re.findall(r"<img[^>]+src=\"([^\"]+)\"", text)
        assert images, f"{chapter}: no figure"
        for src in images:
            if not src.startswith("data:"):
                assert (page.parent / src).resolve().exists(), f"{chapter}: missing image {src}"
        assert "Key takeaways" in text
        assert "Traceback" not in text, f"{chapter} shows an error"


@pytest.mark.slow
def test_prose_pages(book):
    html, _, _ = book
    method = (html / "book" / "method.html").read_text()
    assert re.search(r"<img[^>]+networks\.svg", method), "the diagram of the two networks"
    api = (html / "book" / "api.html").read_text()
    for name in ("SCMEDAL", "get_latent", "counterfactual", "score_embeddings", "cross_validate_mec"):
        assert name in api, f"autodoc did not document {name}"
    perf = (html / "book" / "performance.html").read_text()
    assert "SCALING_TABLE" not in perf and "jit_compile" in perf
    plot = re.findall(r"<img[^>]+src=\"([^\"]*scaling[^\"]*\.png)\"", perf)
    assert plot and (html / "book" / plot[0]).resolve().exists(), "the scaling plot"
    refs = (html / "book" / "references.html").read_text()
    for needle in ("Andrade", "10.1038/s41467-026-72666-4", "2411.06635", "Liu", "van Galen", "Velmeshev",
                   "Litvi"):
        assert needle in refs, needle
    for page in ("intro", "data"):
        assert (html / "book" / f"{page}.html").exists()
    assert (html / "index.html").exists()


@pytest.mark.slow
def test_rebuild_uses_the_execution_cache(book):
    _, first, second = book
    for run in (first, second):       # book/execute.py filled the cache the build reads (the same notebook keys)
        assert "Executing notebook" not in run.stdout
    assert first.stdout.count("Using cached notebook") == len(CHAPTERS)
    assert second.stdout.count("Using cached notebook") == len(CHAPTERS)


@pytest.mark.slow
def test_failing_notebook_fails_the_build(tmp_path):
    """With the book's own _config.yml, one notebook that raises makes the build fail."""
    import nbformat

    src = tmp_path / "src"
    (src / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", src / "_config.yml")
    config = yaml.safe_load((src / "_config.yml").read_text())
    config.pop("bibtex_bibfiles", None)
    (src / "_config.yml").write_text(yaml.safe_dump(config))
    (src / "intro.md").write_text("# Intro\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Broken"),
                                         nbformat.v4.new_code_cell("raise RuntimeError('boom')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src / "notebooks" / "broken.ipynb")
    (src / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/broken\n")
    proc = build(src, tmp_path / "out", dict(os.environ))
    assert proc.returncode != 0
    assert "boom" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_build_has_no_warnings(book):
    _, first, _ = book
    summary = re.findall(r"build succeeded(?:, (\d+) warnings?)?\.", first.stdout + first.stderr)
    assert summary, "no Sphinx summary line"
    assert summary[-1] == "", f"the build printed {summary[-1]} warning(s):\n" + "\n".join(
        line for line in (first.stdout + first.stderr).splitlines() if "WARNING:" in line and ".py:" in line
        or ": WARNING:" in line)


def internal_links(html: Path):
    """(page, url, problem) for every relative href/src of the built pages whose target file, or #anchor in
    it, does not exist. The theme's template macros in _static are not pages."""
    from urllib.parse import unquote, urlsplit

    anchors = {}
    for page in html.rglob("*.html"):
        if "_static" in page.relative_to(html).parts:
            continue
        for url in re.findall(r"\b(?:href|src)=\"([^\"]*)\"", page.read_text(errors="replace")):
            parts = urlsplit(url)
            if not url or parts.scheme or url.startswith("//"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                yield page.relative_to(html), url, "missing file"
            elif parts.fragment and target.suffix == ".html":
                if target not in anchors:
                    anchors[target] = set(re.findall(r"\bid=\"([^\"]+)\"", target.read_text(errors="replace")))
                if unquote(parts.fragment) not in anchors[target]:
                    yield page.relative_to(html), url, "missing anchor"


@pytest.mark.slow
def test_internal_links_resolve_offline(book):
    html, _, _ = book
    broken = list(internal_links(html))
    assert not broken, broken[:20]


@pytest.mark.slow
def test_chapters_hide_setup_and_show_no_absolute_paths(book, tmp_path_factory):
    html, _, _ = book
    base = str(tmp_path_factory.getbasetemp())
    for chapter in CHAPTERS:
        text = (html / "notebooks" / f"{chapter}.html").read_text()
        assert "tag_hide-input" in text and "tag_hide-cell" in text, f"{chapter}: setup cells not hidden"
        for path in (base, str(ROOT)):
            assert path not in text, f"{chapter} shows the absolute path {path}"
    quickstart = (html / "notebooks" / "00_quickstart.html").read_text()
    for call in ("sm.pp.prepare", "sm.SCMEDAL", "model.train", "sm.tl.latent", "model.counterfactual"):
        assert call in quickstart, f"chapter 0 does not show {call}"


def test_internal_link_check_finds_broken_links(tmp_path):
    (tmp_path / "a.html").write_text('<a href="b.html#x">b</a><a href="missing.html">m</a>'
                                     '<a href="https://example.org/">e</a><img src="c.png">')
    (tmp_path / "b.html").write_text('<h1 id="y">b</h1>')
    found = {(url, problem) for _, url, problem in internal_links(tmp_path)}
    assert found == {("b.html#x", "missing anchor"), ("missing.html", "missing file"), ("c.png", "missing file")}


def test_chapter_kernels_may_start_slowly(monkeypatch):
    """book/execute.py gives each chapter's kernel minutes to start (a chapter training on both CPUs once kept a
    new kernel past nbclient's 60 s), and runs it in the chapter's own folder."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("book_execute", ROOT / "book" / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    seen = {}
    monkeypatch.setattr(execute, "single_nb_execution", lambda nb, **kw: seen.update(kw, nb=nb) or "result")
    chapter = types.SimpleNamespace(nb="the notebook", uri=str(ROOT / "notebooks" / "01_batch_suppression.ipynb"))
    data = execute.ProcessData(1, chapter.uri, None, 3600, False)
    assert execute.ChapterWorker.execute(chapter, data) == "result"
    assert seen["startup_timeout"] == execute.KERNEL_START_TIMEOUT >= 300
    assert seen["nb"] == "the notebook" and seen["timeout"] == 3600 and seen["allow_errors"] is False
    assert seen["cwd"] == str(ROOT / "notebooks")
    assert seen["kernel_manager_class"].__name__ == "LoggingKernelManager", "kernel chatter goes to a log"
    assert execute.kernel_log(chapter.uri) == ROOT / "_build" / "logs" / "01_batch_suppression.log"


def test_a_chapter_whose_kernel_dies_while_starting_is_started_again(monkeypatch, capsys):
    """Two chapters starting at once, each in its own process, can pick the same free port, and one kernel then
    dies before it replies (it did in a CI run): book/execute.py starts that chapter again, up to
    KERNEL_START_TRIES times in all, and says so; then the error is the chapter's."""
    import importlib.util
    import types

    from scmedal_lite import cli

    spec = importlib.util.spec_from_file_location("book_execute", ROOT / "book" / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    starts = []

    def dies(times):
        def run(nb, **kw):
            starts.append(nb)
            if len(starts) <= times:
                raise RuntimeError(cli.KERNEL_DIED)
            return "result"
        return run

    chapter = types.SimpleNamespace(nb="the notebook", uri=str(ROOT / "notebooks" / "02_random_effects.ipynb"))
    data = execute.ProcessData(1, chapter.uri, None, 3600, False)
    monkeypatch.setattr(execute, "single_nb_execution", dies(1))
    assert execute.ChapterWorker.execute(chapter, data) == "result" and len(starts) == 2
    assert "02_random_effects.ipynb: its kernel died while starting" in capsys.readouterr().out
    starts.clear()
    monkeypatch.setattr(execute, "single_nb_execution", dies(cli.KERNEL_START_TRIES))
    with pytest.raises(RuntimeError, match=cli.KERNEL_DIED):
        execute.ChapterWorker.execute(chapter, data)
    assert len(starts) == cli.KERNEL_START_TRIES
