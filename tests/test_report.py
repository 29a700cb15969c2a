"""The accuracy report: built from a small stored dataset, it matches checked-in expected text.

The golden report covers the seed formulas, which are implemented as written and do not change;
memcal's own formula is refined over time, so its sections are checked for structure, not text.
After an intended change to the report's layout, regenerate the expected text with
    MEMCAL_UPDATE_EXPECTED=1 .venv/bin/python -m pytest tests/test_report.py
and read the diff before committing it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from estimator.errors import MemcalError
from harness.analysis import build_report, fit, markdown, report
from memcal.cli import main

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "report-fixture.jsonl"
EXPECTED = DATA / "report-fixture.expected.md"
SEEDS = ["per-token", "bit-width", "gqa-flash-notebook", "gguf-cheat-sheet"]


@pytest.mark.slow
def test_report_matches_the_checked_in_text(tmp_path):
    paths = report([FIXTURE], out=tmp_path / "fixture", formulas=SEEDS, name="report-fixture")
    text = paths["markdown"].read_text()
    if os.environ.get("MEMCAL_UPDATE_EXPECTED"):
        EXPECTED.write_text(text)
    assert text == EXPECTED.read_text()
    page = paths["html"].read_text()
    figures = text.count("(in report.html).*")
    assert figures >= 4 and page.count("<figure") == figures == page.count("<svg")  # every figure inline, as SVG
    assert "<h1>memcal accuracy report: report-fixture</h1>" in page
    assert page.index('id="answers"') < page.index('id="error_distribution"') < page.index("<details>")
    assert "http://" not in page.replace("http://www.w3.org/", "") and "https://" not in page  # no network
    assert not [p for p in (tmp_path / "fixture").iterdir() if p.suffix not in (".md", ".html", ".csv")]
    with pytest.raises(MemcalError, match="--force"):
        report([FIXTURE], out=tmp_path / "fixture", formulas=SEEDS)


def test_report_counts_only_ok_points_and_lists_the_rest():
    text = markdown(build_report([FIXTURE], formulas=["per-token"]).blocks)
    assert "24 points used" in text
    assert "Excluded records: 6 oom, 6 skipped" in text
    assert re.search(r"\| oom \| 4 \| OutOfMemoryError: memcal memory cap: N live tensor bytes", text)


@pytest.mark.slow
def test_report_with_memcal_and_a_profile(tmp_path, capsys):
    profile = tmp_path / "fixture.json"
    fit([FIXTURE], out=profile)
    rep = build_report([FIXTURE], calibration=profile)
    text = markdown(rep.blocks)
    assert "these data, so its errors below are in-sample" in text
    assert "### Calibrated with the profile (all 24 points, in-sample)" in text
    assert "issue" not in text and "target" not in text  # words for readers, not the project's bookkeeping
    assert "- **Which formula to trust:** memcal, within " in text
    assert re.search(r"\| weights \| 24 of 24 \|", text)  # memcal's weights are exact on the dry run
    assert re.search(r"\| KV cache \| 24 of 24 \|", text)
    assert "## Seed audit" in text and "### gguf-cheat-sheet" in text
    assert main(["report", str(FIXTURE), "--out", str(tmp_path / "r"), "--calibration", str(profile),
                 "--formula", "memcal", "--formula", "per-token"]) == 0
    assert "report.html" in capsys.readouterr().out


def test_first_screen_answers_in_words():
    from harness.analysis import pct
    from harness.analysis._answer import answers  # white-box: the sentences from known statistics

    def s(median, p95, worst, under=0.0, worst_under=0.0):
        return {"n": 10, "median": median, "p95": p95, "max": worst, "under_share": under, "worst_under": worst_under}
    raw = {"a": s(0.01, 0.02, 0.5), "b": s(0.2, 1.0, 2.0, 0.3, -0.1), "c": s(0.2, 1.0, 2.0, 0.3, -0.1)}
    cal = {"a": s(0.01, 0.02, 0.5), "b": s(0.05, 0.1, 0.2), "c": s(0.05, 0.1, 0.2)}
    trust, spread, under = answers(raw, cal, ["a", "b", "c"], "k-fold", pct)
    assert trust == ("**Which formula to trust:** a, within 2.00 % on 95 % of the points. Its total is off by 1.00 % "
                     "at the median and 50.00 % at worst, and it never predicts less than was measured; the next "
                     "best, b, is within 100.0 % on 95 % of the points.")
    assert "b and c 20.00 % / 200.0 % → 5.00 % / 20.00 %" in spread  # equal numbers share a clause
    assert under.endswith("as written, b and c on 30.00 % (worst -10.00 %); calibrated, none; a never.")


def test_a_point_a_formula_cannot_price_is_left_out_and_said(monkeypatch):
    from harness.analysis import _report  # white-box: a formula that stops with an error at one point
    real = _report.predict

    def predict(dataset, fid, *args, indices=None, **kw):
        points = dataset.points if indices is None else [dataset.points[i] for i in indices]
        if fid == "bit-width" and any(p["point_id"] == dataset.points[3]["point_id"] for p in points):
            raise MemcalError("no layer of that kind")
        return real(dataset, fid, *args, indices=indices, **kw)
    monkeypatch.setattr(_report, "predict", predict)
    text = markdown(build_report([FIXTURE], formulas=["per-token", "bit-width"]).blocks)
    assert "23 points used" in text and "1 not priced" in text
    assert "- **Left out:** bit-width cannot price 1 point (it stops with an error" in text
    assert "| not priced | 1 | bit-width: no layer of that kind |" in text
