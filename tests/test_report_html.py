"""report.html: the page a person reads. Its structure on a small toy-world run (tables, counts,
plots, galleries), hostile strings from a spec, a model or a caption rendered as text, clear
errors for `vbugs report` on a folder without a report, and the demo's page in a real browser
(headless Chromium: no console error, no request, table and galleries visible, a screenshot)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vbugs_ray.flow import audit
from vbugs_ray.spec import parse_spec

HOSTILE_CLASS = "<script>alert('class')</script>"
HOSTILE_CAPTION = '<img src=x onerror="alert(1)">'
HOSTILE_NAME = "<b>audit</b> & co"
HOSTILE_VALUE = "<i>brick</i>"


class Page(HTMLParser):
    """The parts of a page the tests check: tags with their attributes, text by element id."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in ("img", "meta", "br", "meter", "link"):
            self._open.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if self._open and tag not in ("img", "meta", "br", "meter", "link"):
            self._open.pop()

    def handle_data(self, data):
        for element_id in filter(None, self._open):
            self.text_by_id[element_id] = self.text_by_id.get(element_id, "") + data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(k in a and v in a[k].split() for k, v in attrs.items())]


def _vbugs(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, default_spec_dict):
    """A small verified toy-world audit whose spec carries a hostile name (the toy generator
    draws only the values it knows, so a hostile axis value is written into the report later)."""
    spec = json.loads(json.dumps(default_spec_dict))
    spec["name"] = HOSTILE_NAME
    spec.update(budget=1440, run={"executor": "local", "shard_rows": 100_000},
                verify={"images_per_hypothesis": 60, "max_hypotheses": 4, "rounds": 1})
    run_dir = tmp_path_factory.mktemp("html") / "run"
    report = audit(parse_spec(spec), run_dir, progress=lambda _: None)
    return run_dir, report


@pytest.mark.trains
def test_every_audit_writes_a_page_with_its_table_counts_plots_and_galleries(small_run):
    run_dir, report = small_run
    page = Page((run_dir / "report.html").read_text())
    bugs = report["verified_bugs"]
    assert bugs, "the small run verifies the planted star-at-night bug"

    rows = [a for t, a in page.tags if t == "tr"]
    assert len(page.find("table", id="bug-table")) == 1
    assert page.text_by_id["bug-table"].count("%") >= 4 * len(bugs)  # error, base, CI low and high per bug
    for bug in bugs:
        assert bug["description"] in page.text_by_id["bug-table"]
        assert f"bug-{bugs.index(bug) + 1}" in {a.get("id") for _, a in page.tags}  # its card
    assert len(rows) >= 1 + len(bugs)
    filtered = report.get("filter") or {"n_generated": report["n_images"], "n_invalid": 0}
    counts = " ".join(page.text_by_id["image-counts"].split())
    assert f"{filtered['n_generated']} generated" in counts
    assert f"{filtered['n_generated'] - filtered['n_invalid']} valid" in counts
    assert f"{report['verification']['images_generated']} fresh images" in counts
    assert "run time" in page.text_by_id["summary"] and "not recorded" not in page.text_by_id["summary"]

    heatmaps = [a for t, a in page.tags if t == "img" and "heatmap" in a.get("class", "")]
    assert len(heatmaps) == 3  # one per axis of the spec
    assert page.find("img", **{"class": "scatter"}) and page.find("img", **{"class": "diagnosis"})
    plots = [a["src"] for t, a in page.tags if t == "img" and "plot" in a.get("class", "")]
    assert all(src.startswith("data:image/png;base64,") and len(src) > 2000 for src in plots)

    first_card = page.text_by_id["bug-1"]
    assert "failing images" in first_card and "fresh images of" in first_card
    tiles = [a for t, a in page.tags if t == "img" and a.get("src", "").startswith("data:image/jpeg")]
    assert len(tiles) >= 2 * len(bugs)  # each card shows failing images and images without the bug
    assert page.find("table", id="hypothesis-table") and page.find("table", id="slice-table")
    assert len(page.find("script")) == 1 and "default-src 'none'" in page.find("meta")[1]["content"]


@pytest.mark.cli
@pytest.mark.trains
def test_strings_from_specs_models_and_captions_render_as_text(small_run, tmp_path):
    """A class, a caption, a spec name and an axis value made of markup appear as text: no
    element of theirs exists, no script of theirs, and their escaped text is on the page."""
    source, _ = small_run
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    report = json.loads((run_dir / "report.json").read_text())
    bug = report["verified_bugs"][0]
    bug["class"] = HOSTILE_CLASS
    bug["description"] = f"{HOSTILE_CLASS}, at night"
    bug["top_wrong_predictions"] = [[HOSTILE_CLASS, 3]]
    bug["by_open_axis"] = {"background": {HOSTILE_VALUE: [3, 10]}}
    report["flagged_slices"][0]["caption"] = [HOSTILE_CAPTION]
    report["flagged_slices"][1]["effect"] = None  # infinite (a slice that always fails), as report.json holds it
    report["discovery"]["diagnosis"]["r2"] = None
    report["flagged_slices"][0]["predicates"] = {"class": HOSTILE_CLASS, "background": HOSTILE_VALUE}
    hypothesis = next(h for h in report["hypotheses"] if h["key"] == bug["hypothesis"])
    hypothesis["sources"].append({"kind": "cluster", "caption": [HOSTILE_CAPTION]})
    (run_dir / "report.json").write_text(json.dumps(report))

    done = _vbugs("report", str(run_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(run_dir / "report.html")
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    for hostile in (HOSTILE_CLASS, HOSTILE_CAPTION, HOSTILE_NAME, HOSTILE_VALUE):
        assert hostile not in text
    assert "&lt;script&gt;alert(&#39;class&#39;)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in text
    assert "&lt;b&gt;audit&lt;/b&gt; &amp; co" in text and "&lt;i&gt;brick&lt;/i&gt;" in text
    assert len(page.find("script")) == 1 and not page.find("b") and not page.find("i")
    assert not [a for t, a in page.tags if t == "img" and not a.get("src", "").startswith("data:image/")]
    assert HOSTILE_CLASS in page.text_by_id["bug-table"]  # as text, in the table
    assert "∞" in page.text_by_id["slice-table"] and page.find("img", **{"class": "diagnosis"})


@pytest.mark.cli
def test_report_command_errors_are_one_line(tmp_path):
    """No run directory, no report.json yet, a damaged one: one line each, exit 2, nothing written."""
    (tmp_path / "empty").mkdir()
    done = _vbugs("report", str(tmp_path / "empty"))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"vbugs: error: {tmp_path / 'empty'} is not a run directory (no spec.json); run `vbugs audit` first"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps({"fingerprint": "x", "spec": {"name": "n"}}))
    done = _vbugs("report", str(run_dir))
    assert done.returncode == 2 and "report.json does not exist yet: run `vbugs slices" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    (run_dir / "report.json").write_text("{")
    done = _vbugs("report", str(run_dir))
    assert done.returncode == 2 and "report.json cannot be read" in done.stderr
    assert not (run_dir / "report.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as the workplace's browser probe starts it: no sandbox as root, nothing reaching for the network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.cli
@pytest.mark.trains
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_demo_report_in_headless_chromium(demo_run):
    """The demo's page in a real browser: no console error (a Content-Security-Policy violation
    is one), no request but the page itself, the bug table and a gallery visible with decoded
    images, sorting by a header works; the screenshot is saved as RUN_DIR/report.png."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: pip install -e .[dev]")
    run_dir, done = demo_run
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    url = (run_dir / "report.html").resolve().as_uri()
    problems, requests = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
            page.on("request", lambda r: requests.append(r.url) if r.url != url else None)
            page.goto(url, wait_until="load")

            table = page.locator("#bug-table")
            box = table.bounding_box()
            assert box and box["width"] > 0 and box["height"] > 0
            assert table.locator("tbody tr").count() == len(report["verified_bugs"])
            gallery = page.locator("#bug-1 .gallery.failing img")
            assert gallery.count() > 0
            first = gallery.first.bounding_box()
            assert first and first["width"] > 0 and first["height"] > 0
            assert gallery.first.evaluate("img => img.complete && img.naturalWidth > 0")
            assert page.locator("img.heatmap").count() == 3

            descriptions = table.locator("tbody tr td:nth-child(2)")
            before = descriptions.all_inner_texts()
            table.locator("th", has_text="error rate").click()
            rates = [float(v) for v in table.locator("tbody tr td:nth-child(3)").evaluate_all(
                "cells => cells.map(c => c.dataset.sort)")]
            assert rates == sorted(rates) and sorted(descriptions.all_inner_texts()) == sorted(before)
            table.locator("th", has_text="#").first.click()  # back to the report's order for the picture
            page.screenshot(path=str(run_dir / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert not requests, requests[:5]
    assert (run_dir / "report.png").stat().st_size > 50_000


@pytest.mark.trains
def test_a_run_without_verification_shows_its_flagged_slices(small_run, tmp_path):
    """No verified bugs: the table lists the flagged slices and each gets a card with failing
    images from the run and images outside the slice (a whole class's slice: other classes)."""
    from vbugs_ray.webreport import write_html

    source, _ = small_run
    run_dir = Path(shutil.copytree(source, tmp_path / "run"))
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("verified_bugs", "hypotheses", "untested_hypotheses", "discovery", "verification"):
        report.pop(key)
    (run_dir / "report.json").write_text(json.dumps(report))
    page = Page(write_html(run_dir).read_text())
    flagged = report["flagged_slices"]
    assert page.find("table", id="slice-table") and not page.find("table", id="bug-table")
    cards = [a["id"] for _, a in page.tags if a.get("id", "").startswith("slice-") and a["id"][6:].isdigit()]
    assert cards == [f"slice-{i}" for i in range(1, min(len(flagged), 20) + 1)]
    for card in cards:
        assert "none stored" not in page.text_by_id[card] and "no failing image" not in page.text_by_id[card]
    assert not page.find("img", **{"class": "diagnosis"})  # no discovery, no ensemble plot
