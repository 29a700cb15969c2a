"""Displays of a `GateResult`: a Markdown report (fit for a CI job summary), JUnit XML, a verdict line.

Calculation happens in `_regress`; nothing here decides anything. Sizes are shown in binary
units (KiB = 2^10 B, MiB = 2^20 B, GiB = 2^30 B), and changes also in exact bytes.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from estimator.format import human_bytes

from ._regress import Change, FormulaCheck, GateResult

__all__ = ["markdown", "junit_xml", "verdict_line"]

_TITLES = {"pass": "PASS", "fail": "FAIL", "not-comparable": "NOT COMPARABLE"}


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _change_text(c: Change) -> str:
    if c.kind in ("grew", "shrank"):
        rel = f", {c.relative * 100:+.2f}%" if c.relative is not None else ""
        sign = "+" if c.delta_bytes > 0 else "-"
        return f"{sign}{human_bytes(abs(c.delta_bytes))} ({c.delta_bytes:+,} B{rel})"
    if c.kind == "status":
        return f"{c.baseline_status} → {c.current_status}" + (f": {c.message}" if c.message else "")
    return c.message


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _verdict(c: Change) -> str:
    if c.regression:
        return "**regression**"
    return {"shrank": "smaller", "grew": "within threshold", "status": "fixed" if c.current_status == "ok"
            else "changed"}.get(c.kind, c.kind)


def verdict_line(result: GateResult) -> str:
    """One line: the verdict and its counts."""
    head = f"memcal regress: {_TITLES[result.verdict]}"
    if result.verdict == "not-comparable":
        return f"{head} ({'; '.join(result.reasons)})"
    regressed = [c for c in result.regressions if c.kind != "missing"]
    missing = len({c.point_id for c in result.regressions if c.kind == "missing"})
    parts = [f"{len({c.point_id for c in regressed})} of {result.compared} points regressed"]
    if missing:  # not regressed: not measured now at all (each fails the gate all the same)
        parts.append(f"{missing} baseline points missing from the current run")
    if result.formula_checks:
        parts.append(f"{len(result.failed_formulas)} of {len(result.formula_checks)} calibrated formulas "
                     "past their profile's bound")
        unchecked = sum(1 for f in result.formula_checks if f.unchecked)
        if unchecked:
            parts.append(f"{unchecked} calibrated formulas could not be checked")
    return f"{head} ({'; '.join(parts)})"


def _gate_rule(result: GateResult) -> str:
    t = result.thresholds
    if t.tolerance == 0 and t.abs_bytes == 0:
        return "any growth fails (exact gate)"
    return f"growth by more than {_percent(t.tolerance)} and more than {human_bytes(t.abs_bytes)} fails"


def _changes_table(result: GateResult, max_rows: int) -> list[str]:
    if not result.changes:
        return [f"No changes: all {result.compared} points identical in {', '.join(result.metrics)}."]
    rows = ["| | point | metric | baseline | current | change |", "|---|---|---|---:|---:|---|"]
    shown = result.changes[:max_rows]
    for c in shown:
        mark = "❌" if c.regression else "·"
        baseline = human_bytes(c.baseline_bytes) if c.metric else c.baseline_status or "–"
        current = human_bytes(c.current_bytes) if c.metric else c.current_status or "–"
        rows.append(f"| {mark} | {_cell(c.label)} `{c.point_id[:8]}` | {c.metric or 'status'} | {baseline} | "
                    f"{current} | {_cell(_change_text(c))} ({_verdict(c)}) |")
    if len(result.changes) > max_rows:
        rest = result.changes[max_rows:]
        rows.append(f"\n… and {len(rest)} more ({sum(c.regression for c in rest)} of them regressions).")
    unchanged = result.compared - len({c.point_id for c in result.changes if c.kind not in ("missing", "new")})
    rows.append(f"\n{unchanged} of {result.compared} points unchanged.")
    return rows


def _formula_table(checks: tuple[FormulaCheck, ...]) -> list[str]:
    rows = ["| | formula | profile | target | bound (profile) | error now (max) | worst point | |",
            "|---|---|---|---|---:|---:|---|---|"]
    for f in checks:
        bound = f"{f.bound:.2%}" if f.bound is not None else "–"
        error = f"{f.max_error:.2%}" if f.max_error is not None else "–"
        verdict = "**past its bound**" if f.failed else ("within" if f.max_error is not None else "not checked")
        note = f" {f.note}" if f.note else ""
        rows.append(f"| {'❌' if f.failed else '·'} | {f.formula} | `{Path(f.profile).name}` | {f.target} | {bound} | "
                    f"{error} ({f.points} points) | {_cell(f.worst_point)} | {verdict}{_cell(note)} |")
    return rows


def markdown(result: GateResult, max_rows: int = 40) -> str:
    """The report: verdict, what was compared with what, the changed points, the formula checks."""
    lines = [f"## memcal regress: {_TITLES[result.verdict]}", ""]
    lines.append(f"Baseline `{result.baseline}`, current `{result.current}`: experiment `{result.experiment}` "
                 f"(fingerprint `{result.fingerprint}`) on {result.device}.")
    if result.verdict == "not-comparable":
        hint = "Record a new baseline (`memcal sweep EXPERIMENT --out FILE`)"
        only_env = len(result.env_differences) == len(result.reasons)
        if result.env_differences and not result.env_change_allowed and only_env:
            hint += ", or pass `--allow-env-change` to compare anyway"
        lines += ["", "Not compared:", *(f"- {r}" for r in result.reasons), "", hint + "."]
        return "\n".join(lines) + "\n"
    lines.append(f"Gate: {_gate_rule(result)} in {', '.join(result.metrics)}; an ok point that is no longer "
                 "ok fails.")
    if result.env_change_allowed:
        lines += ["", "**Environment changed, compared anyway (`--allow-env-change`):** "
                  + "; ".join(result.env_differences) + "."]
    lines += ["", *_changes_table(result, max_rows)]
    if result.formula_checks:
        lines += ["", "### Calibrated formulas", "", *_formula_table(result.formula_checks)]
    lines += ["", f"**{verdict_line(result)}**"]
    return "\n".join(lines) + "\n"


def junit_xml(result: GateResult) -> str:
    """JUnit XML: one test case per compared point and per calibrated formula; failures carry the change."""
    suite = ET.Element("testsuite", name=f"memcal-regress.{result.experiment}")
    cases = 0
    failures = errors = 0
    if result.verdict == "not-comparable":
        case = ET.SubElement(suite, "testcase", classname="memcal.regress", name="comparable")
        ET.SubElement(case, "error", message="not comparable").text = "\n".join(result.reasons)
        cases, errors = 1, 1
    else:
        by_point: dict[str, list[Change]] = {}
        for c in result.changes:
            by_point.setdefault(c.point_id, []).append(c)
        for pid, changes in by_point.items():
            case = ET.SubElement(suite, "testcase", classname=f"memcal.regress.{result.experiment}",
                                 name=f"{changes[0].label} [{pid[:8]}]")
            cases += 1
            bad = [c for c in changes if c.regression]
            if bad:
                failures += 1
                ET.SubElement(case, "failure", message="; ".join(
                    f"{c.metric or 'status'}: {_change_text(c)}" for c in bad))
            else:
                ET.SubElement(case, "system-out").text = "; ".join(
                    f"{c.metric or 'status'}: {_change_text(c)}" for c in changes)
        unchanged = result.compared - len({c.point_id for c in result.changes if c.kind not in ("missing", "new")})
        if unchanged:
            ET.SubElement(suite, "testcase", classname=f"memcal.regress.{result.experiment}",
                          name=f"{unchanged} unchanged points")
            cases += 1
        for f in result.formula_checks:
            case = ET.SubElement(suite, "testcase", classname="memcal.regress.calibration",
                                 name=f"{f.formula} [{Path(f.profile).name}]")
            cases += 1
            if f.failed:
                failures += 1
                ET.SubElement(case, "failure", message=f"max abs relative error {f.max_error:.4%} > the profile's "
                                                       f"bound {f.bound:.4%} (worst: {f.worst_point})")
            elif f.note:
                ET.SubElement(case, "system-out").text = f.note
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
