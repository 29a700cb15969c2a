"""The accuracy report: every formula's raw and calibrated error on measured data, as Markdown + HTML.

`build_report(results, ...)` computes (`_compare`, `_fit`) and lays the numbers out
as a list of blocks (headings, paragraphs, tables, figures); `_render.markdown` and `_render.html`
only format them. The Markdown holds no timestamp but the data's own provenance, so a report rebuilt
from the same results file is the same text (tests/test_report.py compares one with checked-in
expected text). Figures are SVG, inline in report.html only (a standalone page: no network).

The page reads top-down: the answers in words and the figure that shows them (`_answer`), where the
data come from and what the words mean; then figures of the error against the workload and of the
components; the per-point table; and every remaining table, collapsed.

"Calibrated" means: factors fitted by the same procedure as `memcal fit` on points that exclude the
one predicted (k-fold out-of-fold; the hold-out tables: fitted on the smaller workloads, tested on
the largest). A profile fitted on other data is applied to every point instead; one fitted on these
data gets its own (in-sample) table, but predicts nothing else: in-sample errors flatter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from estimator.calibration import load_calibration
from estimator.errors import MemcalError
from estimator.formulas import FORMULAS, get

from .._common import point_label
from . import _answer as answer
from ._audit import audit_section, components_section, memcal_section
from ._compare import comparison, error_stats, load_dataset, predict
from ._fit import FitSettings, fit_dataset
from ._numbers import gib, pct
from ._render import html, markdown

__all__ = ["Report", "build_report", "markdown", "html", "write_report", "report", "pct"]

DIMENSIONS = (("architecture", "family"), ("precision", "precision"), ("attention", "attention"),
              ("phase", "phase"), ("batch", "batch"), ("length (prompt tokens)", "prompt_len"))


@dataclass
class Report:
    """A report's content: blocks to format (see `_render`), its figures (name -> SVG text), the per-point
    table's data, and the data files written beside it."""

    name: str
    blocks: list[tuple] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)   # data files written beside the report (CSV)
    points: dict[str, Any] | None = None

    def h(self, level: int, text: str, collapsed: bool = False) -> None:
        self.blocks.append(("h", level, text, collapsed))

    def p(self, text: str, intro: bool = False) -> None:
        self.blocks.append(("p", text, intro))

    def items(self, items: Sequence[str], css: str = "") -> None:
        self.blocks.append(("list", list(items), css))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> None:
        align = align or "l" + "r" * (len(header) - 1)
        self.blocks.append(("table", list(header), [[str(c) for c in r] for r in rows], align))

    def figure(self, name: str, svg: str, alt: str) -> None:
        self.figures[name] = svg
        self.blocks.append(("figure", name, alt))


def _stats_row(label: str, s: dict) -> list[str]:
    if not s.get("n"):
        return [label, "0", *["n/a"] * 7]
    return [label, str(s["n"]), pct(s["median"]), pct(s["p95"]), pct(s["max"]), gib(s["max_abs_bytes"]),
            pct(s["bias"], True), pct(s["under_share"]), pct(s["worst_under"], True)]


STATS_HEADER = ["formula", "points", "median", "p95", "max", "max |err| GiB", "bias", "under", "worst under"]


def _frame_stats(frame) -> dict:
    return error_stats(frame["rel_err"], frame["abs_err"])


# --- the report ------------------------------------------------------------------------------------
def build_report(results: Iterable[str | Path], *, calibration: Any = None, formulas: Iterable[str] | None = None,
                 settings: FitSettings | None = None, name: str | None = None) -> Report:
    """Compute everything and lay it out; nothing is written."""
    results = [Path(p) for p in results]
    formulas = [get(f).id for f in (formulas or FORMULAS)]
    dataset, unpriced = _priced(load_dataset(results), formulas)
    profile = load_calibration(calibration) if calibration is not None else None
    if settings is None:
        settings = FitSettings.from_dict(dict(profile.method)) if profile and profile.method else FitSettings()
    fitted = fit_dataset(dataset, formulas=formulas, settings=settings)
    target = settings.target
    raw = comparison(dataset, formulas, target=target, predictions={f: x.raw for f, x in fitted.fits.items()})
    oof = comparison(dataset, formulas, target=target, predictions={f: x.out_of_fold for f, x in fitted.fits.items()})
    in_sample = profile is not None and (profile.data or {}).get("fingerprint") == dataset.fingerprint
    cal, cal_label = oof, "calibrated (k-fold)"
    cal_words = f"each point predicted by factors fitted on the other points, {settings.folds}-fold"
    if profile is not None and not in_sample:
        cal, cal_label = comparison(dataset, formulas, calibration=profile, target=target), "calibrated (profile)"
        cal_words = f"with the factors of the profile `{profile.name}`, fitted on other data"
    rep = Report(name or (results[0].stem if len(results) == 1 else "report"))
    rep.tables["comparison.csv"] = _comparison_csv(raw, cal)
    rep.h(1, f"memcal accuracy report: {rep.name}")
    _first_screen(rep, dataset, raw, cal, formulas, target, cal_label, cal_words, unpriced)
    _figures_section(rep, raw, cal, formulas, cal_label)
    _points_section(rep, raw, cal, formulas, cal_label)
    _summary_section(rep, fitted, formulas, profile, dataset)
    _calibration_section(rep, fitted, profile, dataset)
    _data_section(rep, dataset)
    components_section(rep, raw, formulas)
    memcal_section(rep, raw, oof, formulas)
    audit_section(rep, raw, dataset, formulas)
    rep.h(2, "Error by architecture, precision, attention, phase, batch and length: tables", collapsed=True)
    for fid in formulas:
        _formula_section(rep, fid, raw, cal, cal_label)
    _excluded_section(rep, dataset)
    return rep


CSV_COLUMNS = ("source", "point_id", "model", "family", "device", "batch", "prompt_len", "new_tokens", "dtype",
               "weights", "kv_dtype", "attention", "phase", "cache", "formula",
               *(f"{side}_{c}" for c in ("weights", "kv_cache", "activation", "overhead", "total") for side in "pm"),
               "abs_err", "rel_err")


def _comparison_csv(raw, cal) -> str:
    """Every point and formula: predicted (p_) and measured (m_) bytes, raw and calibrated totals."""
    out = raw[list(CSV_COLUMNS)].copy()
    out["cal_total"] = cal["p_total"].to_numpy()
    out["cal_rel_err"] = cal["rel_err"].to_numpy()
    return out.to_csv(index=False, lineterminator="\n", float_format="%.9g")


UNPRICED = "not priced"


def _priced(dataset, formulas) -> tuple[Any, dict[str, int]]:
    """The dataset without the points some formula cannot price (it raises `MemcalError` there): they
    are listed as excluded with the formula's message, and counted per formula for the first screen.
    One formula's gap must not stop the report, nor hide every other number."""
    failures: dict[int, str] = {}
    for fid in formulas:
        try:
            predict(dataset, fid)
            continue
        except MemcalError:
            pass
        for i in range(len(dataset.points)):
            try:
                predict(dataset, fid, indices=[i])
            except MemcalError as e:
                failures.setdefault(i, f"{fid}: {e}")
    if not failures:
        return dataset, {}
    counts: dict[str, int] = {}
    for message in failures.values():
        counts[message.split(":", 1)[0]] = counts.get(message.split(":", 1)[0], 0) + 1
    gone = [{"source": r["source"], "status": UNPRICED, "model": r["model"], "label": point_label(r),
             "message": failures[i]} for i, r in enumerate(dataset.points) if i in failures]
    points = [r for i, r in enumerate(dataset.points) if i not in failures]
    return replace(dataset, points=points, excluded=dataset.excluded + gone), counts


def _first_screen(rep: Report, dataset, raw, cal, formulas, target, cal_label, cal_words, unpriced) -> None:
    """The answer in words, the figure that shows it, then where the data come from and the terms."""
    n_models = len(dataset.specs)
    rep.p(f"How well {len(formulas)} formula{'s' if len(formulas) != 1 else ''} predict the memory that "
          f"{len(dataset.points)} measured workloads of {n_models} model{'s' if n_models != 1 else ''} needed: the "
          f"**{answer.TARGET_WORDS[target]}** (defined below).", intro=True)
    stats = {f: _frame_stats(raw[raw["formula"] == f]) for f in formulas}
    cstats = {f: _frame_stats(cal[cal["formula"] == f]) for f in formulas}
    said = answer.answers(stats, cstats, formulas, cal_words, pct)
    if unpriced:
        said.append("**Left out:** " + "; ".join(f"{fid} cannot price {n} point{'s' if n != 1 else ''}"
                                                  for fid, n in sorted(unpriced.items()))
                    + " (it stops with an error: listed at the end); those points count nowhere here.")
    rep.blocks.append(("answers", said))
    from . import _plots as plots
    rep.figure("error_distribution.svg", plots.error_distribution(raw, cal, formulas, cal_label),
               "error of each formula's total over all points, as written (grey) and calibrated (blue): box = the "
               "middle half of the points, whiskers = 5th to 95th percentile, dots = the extremes, median in black")
    rep.h(2, "The data")
    rep.items(answer.provenance(dataset, pct), "prov")
    mixed = answer.mixed_devices(dataset, target)
    if mixed:
        rep.p(mixed)
    differences = [d for d in dataset.environment_differences() if ": device: " not in d or not mixed]
    if differences:
        rep.p("The files come from different software or hardware (compared here together, not as one): "
              + "; ".join(differences) + ".")
    rep.p("What the words mean:")
    rep.items(answer.terms(target, cal_words), "terms")


def _figures_section(rep: Report, raw, cal, formulas, cal_label) -> None:
    from . import _plots as plots
    rep.h(2, "How the error depends on the workload")
    rep.p("Error of the total against one workload setting at a time: dots and lines are the median over the points "
          "with that setting, bars span the 5th to the 95th percentile; as written on the left, calibrated on the "
          "right.")
    for name, column, title in (("length", "prompt_len", "prompt length (tokens)"), ("batch", "batch", "batch size"),
                                ("architecture", "family", "architecture"), ("precision", "precision", "precision")):
        if raw[column].nunique() > 1:
            rep.figure(f"error_by_{name}.svg", plots.error_by(raw, cal, formulas, column, title, cal_label),
                       f"error of the total by {title}")
    rep.h(2, "What each formula predicts, component by component")
    rep.p("For a few workloads (the largest prefill, the largest generate, a middle one): each component on its own "
          "scale, the measured bar in black and a dashed line at the measured value; every bar is labelled with its "
          "size. A bar cut at the edge (▶) is more than three times the measured value.")
    rep.figure("components.svg", plots.component_panels(raw, _showcase(raw), formulas),
               "predicted and measured components for a few workloads (as written)")


def _points_section(rep: Report, raw, cal, formulas, cal_label) -> None:
    rep.h(2, "Every point")
    rep.blocks.append(("points",))
    pts = raw.drop_duplicates(["source", "point_id"]).sort_values(["model", "point_id"], kind="mergesort")
    key = list(zip(raw["source"], raw["point_id"], raw["formula"]))
    praw = dict(zip(key, raw["p_total"]))
    pcal = dict(zip(zip(cal["source"], cal["point_id"], cal["formula"]), cal["p_total"]))
    rows = []
    for _, r in pts.iterrows():
        k = (r["source"], r["point_id"])
        rows.append([r["model"], r["device"], r["precision"], r["attention"], r["phase"], int(r["batch"]),
                     int(r["prompt_len"]), int(r["new_tokens"]) if r["phase"] == "generate" else 0, int(r["m_total"]),
                     [_int(praw.get((*k, f))) for f in formulas], [_int(pcal.get((*k, f))) for f in formulas]])
    stats = {f: _frame_stats(raw[raw["formula"] == f]) for f in formulas}  # the table opens on the trusted one
    best = min(formulas, key=lambda f: (stats[f].get("p95", 0), stats[f].get("max", 0), stats[f].get("median", 0), f)) \
        if formulas else ""
    rep.points = {"formulas": list(formulas), "default": best, "cal_label": cal_label, "data": {
        "formulas": list(formulas), "rows": rows}}


def _int(v) -> int | None:
    return None if v is None or v != v else int(v)


def _data_section(rep: Report, dataset) -> None:
    rep.h(2, "Data files", collapsed=True)
    rows = [[Path(s["path"]).name, s.get("experiment"), s.get("fingerprint"),
             f"{s.get('device')}: {s.get('device_name')}", s.get("torch"), s.get("transformers"), s.get("bitsandbytes"),
             (s.get("commit") or "")[:10] + (" (dirty)" if s.get("dirty") else ""), s.get("created"), s.get("records"),
             s.get("ok")]
            for s in dataset.sources]
    rep.table(["file", "experiment", "fingerprint", "device", "torch", "transformers", "bitsandbytes", "commit",
               "created", "records", "ok"], rows, "lllllllllrr")


def _calibration_section(rep: Report, fitted, profile, dataset) -> None:
    s = fitted.settings
    rep.h(2, "Calibration: method and factors", collapsed=True)
    hold = next(iter(fitted.fits.values())).errors["holdout"]
    text = (f"Fit: {s.method} on the relative error of the total (activation term: scale ≥ 0 and offset; overhead "
            f"term: fitted to what the {s.target} level holds beyond live tensors). Held out: per model, the largest "
            f"{s.holdout:.0%} of workloads by batch × (prompt + new) tokens ({hold['train_points']} training, "
            f"{hold['test_points']} held-out points). k-fold: k = {s.folds}, folds by point id.")
    if s.coefficients:
        text += f" memcal's coefficients fitted as well: {', '.join(s.coefficients)}."
    rep.p(text)
    if profile is not None:
        same = (profile.data or {}).get("fingerprint") == dataset.fingerprint
        rep.p(f"Profile `{profile.name}` (schema {profile.schema_version}, memcal {profile.memcal or '?'}) was "
              f"fitted on data fingerprint `{(profile.data or {}).get('fingerprint')}`: "
              + ("these data, so its errors below are in-sample; the held-out and k-fold columns refit it "
                 "without the points they predict." if same else "other data, so its errors below are out-of-sample."))
    factors = {f: profile.factors(f) for f in fitted.fits} if profile is not None else \
        {f: x.factors for f, x in fitted.fits.items()}
    rows = [[fid, f"{f.activation_scale:.4g}", f"{f.activation_offset_bytes:,}", f"{f.overhead_scale:.4g}",
             f"{f.overhead_offset_bytes:,}",
             ", ".join(f"{k} = {v:.4g}" for k, v in sorted(f.coefficients.items())) or "–"]
            for fid, f in factors.items()]
    rep.p("Factors " + ("of the profile:" if profile is not None
                        else "fitted on every point (what `memcal fit` ships):"))
    rep.table(["formula", "activation scale", "activation offset (bytes)", "overhead scale", "overhead offset (bytes)",
               "coefficients"], rows, "lrrrrl")


def _summary_section(rep: Report, fitted, formulas, profile, dataset) -> None:
    rep.h(2, "Error statistics: tables", collapsed=True)
    rep.p("Error = (predicted − measured) / measured, of the total; median, p95 and max are of its absolute value; "
          "bias is its mean; under is the share of points a formula predicts too little; worst under is its most "
          "negative value.")
    n = len(fitted.dataset.points)
    rep.h(3, f"As written (all {n} points)")
    rep.table(STATS_HEADER, [_stats_row(f, fitted.fits[f].errors["raw"]) for f in formulas])
    test = next(iter(fitted.fits.values())).errors["holdout"]["test_points"]
    rep.h(3, f"Held out: the largest workloads ({test} points), as written")
    rep.table(STATS_HEADER, [_stats_row(f, fitted.fits[f].errors["holdout"]["raw"]) for f in formulas])
    rep.h(3, f"Held out: the largest workloads ({test} points), calibrated on the smaller ones")
    rep.table(STATS_HEADER, [_stats_row(f, fitted.fits[f].errors["holdout"]["calibrated"]) for f in formulas])
    rep.h(3, f"k-fold (k = {fitted.settings.folds}), calibrated, out-of-fold (all {n} points)")
    rows = [_stats_row(f, fitted.fits[f].errors["kfold"]["calibrated"])
            + [pct(fitted.fits[f].errors["kfold"]["mean_fold_median"])] for f in formulas]
    rep.table(STATS_HEADER + ["mean fold median"], rows)
    if profile is not None:
        same = (profile.data or {}).get("fingerprint") == dataset.fingerprint
        cal = comparison(dataset, formulas, calibration=profile, target=fitted.settings.target)
        rep.h(3, f"Calibrated with the profile (all {n} points{', in-sample' if same else ''})")
        rep.table(STATS_HEADER, [_stats_row(f, _frame_stats(cal[cal["formula"] == f])) for f in formulas])


def _showcase(raw) -> list[dict]:
    """A few workloads for the component bars: the largest prefill, the largest generate, a median one."""
    points = raw.drop_duplicates("point_id").sort_values(["m_total", "point_id"], kind="mergesort")
    chosen = []
    for phase in ("prefill", "generate"):
        p = points[points["phase"] == phase]
        if len(p):
            chosen.append(p.iloc[-1])
    if len(points):
        chosen.append(points.iloc[len(points) // 2])
    out, seen = [], set()
    for row in chosen:
        if row["point_id"] in seen:
            continue
        seen.add(row["point_id"])
        out.append({**row.to_dict(), "title": point_label({"model": row["model"], "workload": row.to_dict()})})
    return out


# --- per formula ---------------------------------------------------------------------------------------
def _spread(st: dict) -> str:
    return "n/a" if not st.get("n") else f"{pct(st['median'])} / {pct(st['p95'])} / {pct(st['max'])}"


def _formula_section(rep: Report, fid: str, raw, cal, cal_label: str) -> None:
    module = get(fid)
    rep.h(3, f"{fid}: by architecture, precision, attention, phase, batch and length")
    rep.p(f"{module.title} (source: {module.source}). Raw and {cal_label} |error| of the total as median / p95 / "
          "max, the largest error in GiB, the signed bias and the share of underestimates.")
    r, c = raw[raw["formula"] == fid], cal[cal["formula"] == fid].set_index("point_id")
    for title, column in DIMENSIONS:
        rows = []
        for value, g in r.groupby(column, sort=True):
            sr = _frame_stats(g)
            sc = error_stats(c["rel_err"].reindex(g["point_id"]), c["abs_err"].reindex(g["point_id"]))
            rows.append([value, sr["n"], _spread(sr), gib(sr["max_abs_bytes"]), pct(sr["bias"], True),
                         pct(sr["under_share"]), _spread(sc), gib(sc.get("max_abs_bytes")), pct(sc.get("bias"), True),
                         pct(sc.get("under_share")), pct(sc.get("worst_under"), True)])
        rep.h(4, title)
        rep.table([title, "points", "raw median / p95 / max", "raw max GiB", "raw bias", "raw under",
                   "cal. median / p95 / max", "cal. max GiB", "cal. bias", "cal. under", "cal. worst under"], rows)


def _excluded_section(rep: Report, dataset) -> None:
    rep.h(2, "Excluded points", collapsed=True)
    if not dataset.excluded:
        rep.p("None: every record has status ok.")
        return
    groups: dict[tuple[str, str], list[str]] = {}
    for e in dataset.excluded:
        message = re.sub(r"\d[\d,]*", "N", e["message"])[:160]  # sizes differ; the reason does not
        groups.setdefault((e["status"], message), []).append(e["label"])
    rows = [[status, len(labels), message or "–", sorted(labels)[0]]
            for (status, message), labels in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1]))]
    rep.p(f"{len(dataset.excluded)} records count nowhere above: not ok, or {UNPRICED} (a formula stops with an "
          "error there). Numbers in messages are shown as N:")
    rep.table(["status", "records", "reason", "example"], rows, "lrll")


def write_report(rep: Report, out: str | Path, *, force: bool = False) -> dict[str, Path]:
    """Write report.md, report.html (figures embedded) and the tables into the folder ``out``; refuses to
    overwrite unless ``force``."""
    out = Path(out)
    _check_folder(out)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    if not force and any(p.exists() for p in paths.values()):
        raise MemcalError(f"{out}: holds a report already; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rep.tables.items():
        (out / name).write_text(text)
    paths["markdown"].write_text(markdown(rep.blocks))
    paths["html"].write_text(html(rep.blocks, rep.figures, f"memcal accuracy report: {rep.name}", rep.points))
    return paths


def _check_folder(out: Path) -> None:
    """The report is a folder: refuse a path that is a file (even with --force: it is not a report)."""
    if out.exists() and not out.is_dir():
        raise MemcalError(f"{out}: is a file, not a folder; a report is a folder (report.md, report.html, tables): "
                          "pick another --out")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MemcalError(f"{out}: cannot be created: {parent} is a file")
            break


def report(results: Iterable[str | Path], *, out: str | Path, calibration: Any = None,
           formulas: Iterable[str] | None = None, settings: FitSettings | None = None, name: str | None = None,
           force: bool = False) -> dict[str, Path]:
    """`memcal report` as a function: build the report and write it; returns the written paths."""
    _check_folder(Path(out))  # before the work
    rep = build_report(results, calibration=calibration, formulas=formulas, settings=settings,
                       name=name or Path(out).name)
    return write_report(rep, out, force=force)
