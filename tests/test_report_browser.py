"""The accuracy report in a real browser: headless Chromium (Debian's package) driven by Playwright.

What a reader sees is checked where it is decided, in the layout engine: the first 1400×900 screen
holds the title, the answers and their figure; nothing is wider than the page (numbers do not wrap
inside their cells); the page makes no network request, runs no failing script, and its per-point
table sorts and filters. The demo report is built here from committed files (a CPU baseline and the
dry-run test fixture: a mixed-device dataset, as `make demo` makes); the committed reports under
results/reports/ are checked as they are.

Needs the `playwright` Python package (dev extras) and a Chromium binary: /usr/bin/chromium
(`apt-get install chromium`), or the path in MEMCAL_CHROMIUM; no browser is downloaded. Without
them the tests skip and say why. `make report-check` runs them and keeps screenshots and page heights
under build/report-check/ (MEMCAL_REPORT_CHECK_DIR).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what `make demo` reports: the committed CPU baseline (cpu-smoke, 72 points) and the demo's dry run
# (experiments/demo-dryrun.toml, 12 points, swept by the `demo` fixture)
BASELINE = ROOT / "results/baselines/cpu-smoke.jsonl"
DEMO_POINTS = 72 + 12
COMMITTED = sorted((ROOT / "results/reports").glob("*/report.html"))
VIEWPORT = {"width": 1400, "height": 900}

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = os.environ.get("MEMCAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip(f"no Chromium at {path}: install Debian's `chromium` (apt-get install chromium) or set "
                    "MEMCAL_CHROMIUM to run the browser check of the report")
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` Python package is not "
                                   "installed (pip install -e '.[dev]'): the browser check of the report is skipped")
    path = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path)
        yield b
        b.close()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    where = os.environ.get("MEMCAL_REPORT_CHECK_DIR")
    path = Path(where) if where else tmp_path_factory.mktemp("report-check")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def demo(out_dir) -> Path:
    from harness.analysis import report
    from memcal.commands.sweep import sweep
    dryrun = out_dir / "demo-dryrun.jsonl"
    dryrun.unlink(missing_ok=True)
    sweep(str(ROOT / "experiments/demo-dryrun.toml"), out=str(dryrun), progress=False)
    return report([BASELINE, dryrun], out=out_dir / "demo", name="demo", force=True)["html"]


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth, bad = [];
  const clipped = el => { for (let a = el.parentElement; a; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o !== 'visible') return true; } return false; };
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > width + 1 || r.left < -1) && !clipped(el))
      bad.push(el.tagName + (el.id ? '#' + el.id : '') + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  for (const box of document.querySelectorAll('.scroll, #points .box'))
    if (box.getBoundingClientRect().right > width + 1) bad.push('scroll box wider than the page');
  return {scrollWidth: document.documentElement.scrollWidth, width, bad: bad.slice(0, 20)};
}"""

WRAPPED_JS = """() => {
  const wrapped = [];
  for (const td of document.querySelectorAll('td.r, th.r')) {
    const range = document.createRange(); range.selectNodeContents(td);
    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (tops.size > 1) wrapped.push(td.textContent);
  }
  return wrapped.slice(0, 20);
}"""


def _open(browser, path: Path):
    """The page with the network off: any request that is not the file itself is refused and noted."""
    context = browser.new_context(viewport=VIEWPORT, offline=True)
    page = context.new_page()
    requests, errors = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def route(r):
        if r.request.url.startswith("file:") or r.request.url.startswith("data:"):
            return r.continue_()
        requests.append(r.request.url)
        return r.abort()
    page.route("**/*", route)
    page.goto(path.resolve().as_uri(), wait_until="load")
    return context, page, requests, errors


def _check_page(browser, path: Path, out_dir: Path, name: str) -> dict:
    context, page, requests, errors = _open(browser, path)
    try:
        assert requests == [], f"the page asked the network for {requests}"
        assert errors == [], f"script errors: {errors}"
        box = {sel: page.locator(sel).first.bounding_box() for sel in ("h1", "#answers", "figure#error_distribution")}
        for sel, b in box.items():
            assert b is not None, f"{name}: no {sel}"
            assert b["y"] >= 0 and b["y"] + b["height"] <= VIEWPORT["height"], \
                f"{name}: {sel} is not within the first {VIEWPORT['width']}×{VIEWPORT['height']} screen: {b}"
        assert "Which formula to trust" in page.locator("#answers").inner_text()
        assert page.locator("figure#error_distribution svg text").count() > 5  # text stays text in the SVG
        page.screenshot(path=str(out_dir / f"{name}-first-screen.png"))
        height = page.evaluate("document.documentElement.scrollHeight")
        page.screenshot(path=str(out_dir / f"{name}-page.png"), full_page=True)
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        overflow = page.evaluate(OVERFLOW_JS)
        assert overflow["scrollWidth"] <= overflow["width"] and not overflow["bad"], f"{name}: overflow {overflow}"
        assert page.evaluate(WRAPPED_JS) == [], f"{name}: numbers wrap inside their cells"
        height_open = page.evaluate("document.documentElement.scrollHeight")
        text = page.locator("body").inner_text()
        for word in ("issue 5", "issue ", "targets of"):
            assert word not in text, f"{name}: the page speaks of {word!r}"
        return {"height_px": height, "height_all_open_px": height_open, "page": str(path),
                "tables": page.locator("table").count(), "figures": page.locator("figure svg").count()}
    finally:
        context.close()


def _record(out_dir: Path, name: str, facts: dict) -> None:
    (out_dir / f"{name}.json").write_text(json.dumps(facts, indent=1) + "\n")


def test_demo_report_reads_in_a_browser(browser, demo, out_dir):
    facts = _check_page(browser, demo, out_dir, "demo")
    _record(out_dir, "demo", facts)
    text = demo.read_text()
    assert "These data combine devices on purpose" in text  # CPU and dry run, explained as what they are


def test_per_point_table_sorts_and_filters(browser, demo):
    context, page, _, errors = _open(browser, demo)
    try:
        rows = page.locator("#points tbody tr")
        total = rows.count()
        assert total == DEMO_POINTS
        page.locator("#points input[type=search]").fill("dry-run generate")
        assert 0 < rows.count() < total
        assert all("dry-run" in t and "generate" in t for t in rows.all_inner_texts())
        page.locator("#points input[type=search]").fill("")
        page.locator("#points th", has_text="measured").click()  # descending first: largest peak on top
        first = page.locator("#points tbody tr").first.inner_text()
        page.locator("#points th", has_text="measured").click()
        assert page.locator("#points tbody tr").first.inner_text() != first
        page.locator("#points select").select_option("per-token")
        page.locator("#points input[type=checkbox]").check()
        assert rows.count() < total
        assert errors == []
    finally:
        context.close()


@pytest.mark.parametrize("path", COMMITTED, ids=[p.parent.name for p in COMMITTED])
def test_committed_reports_read_in_a_browser(browser, path, out_dir):
    if 'id="answers"' not in path.read_text():
        pytest.skip(f"{path.relative_to(ROOT)} was written by an older renderer: regenerate it with the command "
                    "in docs/calibration.md")
    _record(out_dir, path.parent.name, _check_page(browser, path, out_dir, path.parent.name))
