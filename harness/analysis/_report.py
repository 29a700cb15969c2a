"""The accuracy report: every formula's raw and calibrated error on measured data, as Markdown + HTML.

`build_report(results, ...)` computes (`_compare`, `_fit`) and lays the numbers out
as a list of blocks (headings, paragraphs, tables, images); `markdown(blocks)` and `html(blocks,
images)` only format them. The Markdown holds no timestamp but the data's own provenance, so a report
rebuilt from the same results file is the same text (tests/test_report.py compares one with
checked-in expected text). Figures are PNG files next to report.md, and embedded (base64) in
report.html, which is a standalone page.

"Calibrated" means, unless a profile is given: factors fitted by the same procedure as `memcal fit`
on points that exclude the one predicted (k-fold out-of-fold for the breakdown tables; the
largest-workloads hold-out for the headline table). With ``calibration=`` a profile's factors are
applied to every point instead (in-sample when it was fitted on these data: the report says so).
"""
from __future__ import annotations

import base64
import html as _html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from estimator.calibration import load_calibration
from estimator.errors import MemcalError
from estimator.format import human, pick_unit
from estimator.formulas import FORMULAS, get

from .._common import point_label
from ._compare import TARGETS, comparison, error_stats, load_dataset
from ._fit import FitSettings, fit_dataset

__all__ = ["Report", "build_report", "markdown", "html", "write_report", "report", "pct"]

DIMENSIONS = (("architecture", "family"), ("precision", "precision"), ("attention", "attention"),
              ("phase", "phase"), ("batch", "batch"), ("length (prompt tokens)", "prompt_len"))
SEEDS = ("per-token", "bit-width", "gqa-flash-notebook", "interactive-calculator", "gguf-cheat-sheet")
# memcal's targets (issue 5): held-out median and max |relative error|, worst underestimate.
TARGET_MEDIAN, TARGET_MAX, TARGET_UNDER = 0.005, 0.02, -0.01


@dataclass
class Report:
    """A report's content: blocks to format, and its figures (file name -> PNG bytes)."""

    name: str
    blocks: list[tuple] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)   # data files written beside the report (CSV)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: Sequence[str]) -> None:
        self.blocks.append(("list", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> None:
        align = align or "l" + "r" * (len(header) - 1)
        self.blocks.append(("table", list(header), [[str(c) for c in r] for r in rows], align))

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.images[name] = png
        self.blocks.append(("image", name, alt))


# --- number formats (display only) -----------------------------------------------------------------
def pct(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return "n/a"
    v = x * 100
    if v == 0:
        return "0 %"
    if abs(v) < 0.005:  # not exact, but below what two decimals show
        return f"{'-' if v < 0 else '+' if signed else ''}<0.01 %"
    digits = 2 if abs(v) < 100 else 1 if abs(v) < 1000 else 0
    return f"{v:{'+' if signed else ''},.{digits}f} %"


def gib(x: float | None) -> str:
    return "n/a" if x is None or x != x else human(x, "GiB", None)


def ratio(x: float | None) -> str:
    return "n/a" if x is None or x != x or x in (float("inf"), float("-inf")) else f"×{x:.3g}"


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
    dataset = load_dataset(results)
    profile = load_calibration(calibration) if calibration is not None else None
    if settings is None:
        settings = FitSettings.from_dict(dict(profile.method)) if profile and profile.method else FitSettings()
    formulas = [get(f).id for f in (formulas or FORMULAS)]
    fitted = fit_dataset(dataset, formulas=formulas, settings=settings)
    target = settings.target
    raw = comparison(dataset, formulas, target=target, predictions={f: x.raw for f, x in fitted.fits.items()})
    oof = comparison(dataset, formulas, target=target, predictions={f: x.out_of_fold for f, x in fitted.fits.items()})
    cal, cal_label = oof, "calibrated (k-fold)"
    if profile is not None:
        cal, cal_label = comparison(dataset, formulas, calibration=profile, target=target), "calibrated (profile)"
    rep = Report(name or (results[0].stem if len(results) == 1 else "report"))
    rep.tables["comparison.csv"] = _comparison_csv(raw, cal)
    rep.h(1, f"memcal accuracy report: {rep.name}")
    rep.p(f"Every error compares a formula's total with the measured **{target}-level peak** "
          f"(`{TARGETS[target]}`{': live tensor storages, weights included' if target == 'tensor' else ''}). "
          "Error = (predicted − measured) / measured; median, p95 and max are of its absolute value; bias is its "
          "mean; under is the share of points a formula underestimates; worst under is its most negative value.")
    _data_section(rep, dataset)
    _calibration_section(rep, fitted, profile, dataset)
    _summary_section(rep, fitted, formulas, profile, cal)
    _plots_section(rep, raw, cal, formulas, cal_label)
    _components_section(rep, raw, formulas)
    _memcal_section(rep, raw, oof, formulas)
    _audit_section(rep, raw, dataset, formulas)
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


def _data_section(rep: Report, dataset) -> None:
    rep.h(2, "Data")
    rows = [[Path(s["path"]).name, s.get("experiment"), s.get("fingerprint"),
             f"{s.get('device')}: {s.get('device_name')}", s.get("torch"), s.get("transformers"), s.get("bitsandbytes"),
             (s.get("commit") or "")[:10] + (" (dirty)" if s.get("dirty") else ""), s.get("created"), s.get("records"),
             s.get("ok")]
            for s in dataset.sources]
    rep.table(["file", "experiment", "fingerprint", "device", "torch", "transformers", "bitsandbytes", "commit",
               "created", "records", "ok"], rows, "lllllllllrr")
    counts: dict[str, int] = {}
    for e in dataset.excluded:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    excluded = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    rep.p(f"{len(dataset.points)} points used (status ok; one per point id, the median repeat). "
          f"Excluded records: {excluded} (listed at the end). Data fingerprint `{dataset.fingerprint}`; "
          f"{len(dataset.specs)} models.")
    differences = dataset.environment_differences()
    if differences:
        rep.p("The files come from different environments (compared here together, not as one): "
              + "; ".join(differences) + ".")


def _calibration_section(rep: Report, fitted, profile, dataset) -> None:
    s = fitted.settings
    rep.h(2, "Calibration")
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


def _summary_section(rep: Report, fitted, formulas, profile, cal) -> None:
    rep.h(2, "Summary")
    n = len(fitted.dataset.points)
    rep.h(3, f"Raw (all {n} points)")
    rep.table(STATS_HEADER, [_stats_row(f, fitted.fits[f].errors["raw"]) for f in formulas])
    test = next(iter(fitted.fits.values())).errors["holdout"]["test_points"]
    rep.h(3, f"Held out: the largest workloads ({test} points), raw")
    rep.table(STATS_HEADER, [_stats_row(f, fitted.fits[f].errors["holdout"]["raw"]) for f in formulas])
    rep.h(3, f"Held out: the largest workloads ({test} points), calibrated on the smaller ones")
    rep.table(STATS_HEADER, [_stats_row(f, fitted.fits[f].errors["holdout"]["calibrated"]) for f in formulas])
    rep.h(3, f"k-fold (k = {fitted.settings.folds}), calibrated, out-of-fold (all {n} points)")
    rows = [_stats_row(f, fitted.fits[f].errors["kfold"]["calibrated"])
            + [pct(fitted.fits[f].errors["kfold"]["mean_fold_median"])] for f in formulas]
    rep.table(STATS_HEADER + ["mean fold median"], rows)
    if profile is not None:
        rep.h(3, f"Calibrated with the profile (all {n} points)")
        rep.table(STATS_HEADER, [_stats_row(f, _frame_stats(cal[cal["formula"] == f])) for f in formulas])
    if "memcal" in fitted.fits:
        _targets(rep, fitted, formulas)


def _targets(rep: Report, fitted, formulas) -> None:
    h = fitted.fits["memcal"].errors["holdout"]["calibrated"]
    if not h.get("n"):
        return
    seeds = [f for f in formulas if f != "memcal"]
    beaten = [f for f in seeds if fitted.fits[f].errors["holdout"]["calibrated"].get("n") and
              (h["median"] < fitted.fits[f].errors["holdout"]["calibrated"]["median"] and
               h["max"] < fitted.fits[f].errors["holdout"]["calibrated"]["max"])]
    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"
    items = [f"held-out median |error| {pct(h['median'])} (target ≤ {pct(TARGET_MEDIAN)}): "
             f"{mark(h['median'] <= TARGET_MEDIAN)}",
             f"held-out max |error| {pct(h['max'])} (target ≤ {pct(TARGET_MAX)}): {mark(h['max'] <= TARGET_MAX)}",
             f"worst held-out underestimate {pct(h['worst_under'], True)} (target ≥ {pct(TARGET_UNDER, True)}): "
             f"{mark(h['worst_under'] >= TARGET_UNDER)}"]
    if seeds:
        items.append(f"beats every seed formula on held-out median and max (calibrated): "
                     f"{mark(len(beaten) == len(seeds))}"
                     + ("" if len(beaten) == len(seeds)
                        else f" (not: {', '.join(f for f in seeds if f not in beaten)})"))
    rep.p("memcal's calibrated formula against the targets of issue 5:")
    rep.items(items)


def _plots_section(rep: Report, raw, cal, formulas, cal_label) -> None:
    from . import _plots as plots
    rep.h(2, "Plots")
    rep.image("predicted_vs_measured.png", plots.predicted_vs_measured(raw, cal, formulas, cal_label),
              "predicted vs measured total, per formula")
    rep.image("error_vs_length.png", plots.error_vs_length(raw, cal, formulas, cal_label),
              "relative error of the total vs prompt length")
    rep.image("components.png", plots.component_bars(raw, _showcase(raw), formulas),
              "stacked components for a few workloads")


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


# --- components ------------------------------------------------------------------------------------------
COMPONENT_LABELS = (("weights", "weights"), ("kv_cache", "KV cache"), ("activation", "activations"),
                    ("overhead", "overhead"))


def _components_section(rep: Report, raw, formulas) -> None:
    rep.h(2, "Components (raw)")
    unit, size = pick_unit(float(raw["m_total"].astype("float64").median()))
    rep.p("Each formula's components against the measured ones: weights and KV cache as the record holds them; "
          "activations = tensor-level peak − weights − KV cache; overhead = device-level − allocator-level peak "
          "(cuda, mps), allocator-level − tensor-level peak (cpu), not measured on the dry run (the tensor-level "
          "target holds none: a formula's overhead is all error there). Ratios and errors over the points where the "
          f"measured component is positive; sizes in {unit}; every point's bytes are in comparison.csv.")

    def size_(x: float) -> str:
        return "n/a" if x != x else f"{x / size:,.4g}"
    rows = []
    for fid in formulas:
        f = raw[raw["formula"] == fid]
        for comp, label in COMPONENT_LABELS:
            m = f[f"m_{comp}"].astype("float64")
            p = f[f"p_{comp}"].astype("float64")
            measured = m.notna()
            rel = f[f"rel_{comp}"].dropna()
            r = (p / m).where(m > 0).dropna()
            show = comp != "overhead" and len(rel)  # a measured overhead is often 0: no ratio to speak of
            rows.append([fid, label, int(measured.sum()), ratio(float(r.median())) if show else "–",
                         pct(float(rel.abs().median())) if show else "–", pct(float(rel.abs().max())) if show else "–",
                         size_(float(p.median())), size_(float(m[measured].median())) if measured.any() else "n/a",
                         size_(float(m[measured].max())) if measured.any() else "n/a"])
    rep.table(["formula", "component", "points measured", "median predicted / measured", "median |error|",
               "max |error|", "median predicted", "median measured", "max measured"], rows, "llrrrrrrr")


# --- memcal: exactness and where its error is --------------------------------------------------------
def _memcal_section(rep: Report, raw, oof, formulas) -> None:
    if "memcal" not in formulas:
        return
    m = raw[raw["formula"] == "memcal"]
    rep.h(2, "memcal's formula: exact components and where the error is")
    dense = m[(m["weights"] == "none") & (m["kv_dtype"] == m["dtype"])]
    rows = []
    for comp, label in (("weights", "weights"), ("kv_cache", "KV cache")):
        exact = (dense[f"p_{comp}"] == dense[f"m_{comp}"]).sum()
        rows.append([label, f"{exact} of {len(dense)}", _worst_diff(dense, comp)])
    qm = m[m["weights"] != "none"]
    if len(qm):
        exact = (qm["p_weights"] == qm["m_weights"]).sum()
        rows.append(["weights, bitsandbytes", f"{exact} of {len(qm)}", _worst_diff(qm, "weights")])
    rep.p("Predicted bytes equal to the measured bytes, unquantized weights and caches in the compute dtype:")
    rep.table(["component", "exact at", "largest difference (bytes)"], rows, "lrr")
    o = oof[oof["formula"] == "memcal"].set_index("point_id")["rel_err"]
    keys = ["family", "precision", "attention", "phase", "peak_set_by"]
    rows = []
    for key, g in m.groupby(keys, sort=True):
        cal = o.reindex(g["point_id"])
        rows.append((-float(g["rel_err"].abs().max()), [*key, len(g), pct(g["rel_err"].median(), True),
                     pct(g["rel_err"].min(), True), pct(g["rel_err"].max(), True),
                     pct(cal.median(), True), pct(cal.min(), True), pct(cal.max(), True)]))
    rows.sort(key=lambda r: (r[0], r[1][:5]))
    rep.p("Raw and calibrated (k-fold) signed error by group, the worst raw groups first (peak set by: the part of "
          "the run memcal's formula says sets the peak):")
    rep.table(["architecture", "precision", "attention", "phase", "peak set by", "points", "raw median", "raw min",
               "raw max", "cal. median", "cal. min", "cal. max"], [r[1] for r in rows[:25]], "lllllrrrrrrr")


def _worst_diff(frame, comp: str) -> str:
    if not len(frame):
        return "n/a"
    d = (frame[f"p_{comp}"].astype("float64") - frame[f"m_{comp}"].astype("float64"))
    return f"{int(d.iloc[int(np.argmax(d.abs().to_numpy()))]):+,}"


# --- the seed audit ------------------------------------------------------------------------------------
def _kv_explanations(row, spec) -> list[str] | None:
    """Which of the seeds' known simplifications reproduce a KV prediction (as a product of factors):
    [] when the prediction is right, None when no combination explains it."""
    from estimator.formulas import memcal as mf

    from ._compare import workload_of
    w = workload_of(row["_record"])
    m, p = float(row["m_kv_cache"]), float(row["p_kv_cache"])
    if m <= 0:
        return None
    width = spec.num_kv_heads * spec.head_dim
    positions = sum(mf.kv_positions(spec, w)) / max(spec.num_layers, 1)
    widths = [(1.0, ""), (spec.hidden_size / width, "K/V at the hidden width h (ignores grouped-query attention)"),
              (spec.hidden_size / spec.num_kv_heads / width, "K/V width h/g instead of kv_heads × head_dim")]
    lengths = [(1.0, ""), (w.total_len / positions, "s = prompt + new tokens in every layer (the cache holds "
                                                    "prompt + new − 1; sliding-window layers a window)")]
    sizes = [(1.0, ""), (2 / w.kv_bytes, "2 bytes per element, fixed"),
             (w.weight_bits / 8 / w.kv_bytes, "the weights' bit width for the cache")]
    best = None
    for fw, tw in widths:
        for fl, tl in lengths:
            for fs, ts in sizes:
                if abs(fw * fl * fs * m - p) <= 0.01 * m:
                    texts = [t for t in (tw, tl, ts) if t]
                    if best is None or len(texts) < len(best):
                        best = texts
    return best


def _kv_reading(explanations: list) -> str:
    n = len(explanations)
    tally: dict[str, int] = {}
    for e in explanations:
        for text in (["right"] if e == [] else ["not explained by the known simplifications"] if e is None else e):
            tally[text] = tally.get(text, 0) + 1
    return "; ".join(f"{t} ({k} of {n})" for t, k in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))


ACTIVATION_SUBSETS = (
    ("full-prompt logits dominate", "prefill points where the b·s·vocab logits are at least half of the measured "
     "activations: the seeds count no logits"),
    ("eager attention", "eager attention: the b·heads·s² scores (only 002/003's vanilla variant counts s²)"),
    ("generate", "generate: decode steps over the grown cache and an fp32 copy of the last logits"),
    ("other", "MLP intermediates and residual streams of one layer"),
)


def _activation_subset(row) -> str:
    logits = row["batch"] * row["prompt_len"] * row["vocab_size"] * {"fp32": 4}.get(row["dtype"], 2)
    if row["phase"] == "prefill" and row["m_activation"] is not None and logits >= 0.5 * float(row["m_activation"]):
        return "full-prompt logits dominate"
    if row["attention"] == "eager":
        return "eager attention"
    return "generate" if row["phase"] == "generate" else "other"


def _audit_section(rep: Report, raw, dataset, formulas) -> None:
    seeds = [f for f in formulas if f in SEEDS]
    if not seeds:
        return
    rep.h(2, "Seed audit: where each seed formula fails, and why")
    rep.p("Per component and subset of points: the median ratio of predicted to measured bytes, and the component's "
          "median signed effect on the total's relative error, (predicted − measured component) / measured total. "
          "KV readings name the seeds' known simplifications whose product reproduces the predicted cache within "
          "1 %, each with the number of points it explains.")
    records = {(r["source"], r["point_id"]): r for r in dataset.points}
    for fid in seeds:
        f = raw[raw["formula"] == fid].copy()
        f["_record"] = [records[(s, p)] for s, p in zip(f["source"], f["point_id"])]
        rows = []
        for kind, sub in (("GQA/MQA", f[f["attention_kind"] != "MHA"]), ("MHA", f[f["attention_kind"] == "MHA"])):
            if len(sub):
                why = [_kv_explanations(r, dataset.specs[r["model"]]) for _, r in sub.iterrows()]
                rows.append(_audit_row("KV cache", kind, sub, "kv_cache", _kv_reading(why)))
        for label, sub in (("unquantized", f[f["weights"] == "none"]), ("bitsandbytes", f[f["weights"] != "none"])):
            if len(sub):
                r = float((sub["p_weights"] / sub["m_weights"].astype("float64")).median())
                if label != "unquantized":
                    why = ("every parameter at the quantized width: embeddings, lm_head and norms stay in the compute "
                           "dtype, and bitsandbytes adds scales")
                elif abs(r - 1) < 1e-3:
                    why = "right to 0.1 % (parameters only: buffers such as rotary tables are not counted)"
                else:
                    why = "the parameter count differs from the model's own (buffers, tied embeddings or a typed count)"
                rows.append(_audit_row("weights", label, sub, "weights", why))
        subsets = f.apply(_activation_subset, axis=1) if len(f) else []
        for label, why in ACTIVATION_SUBSETS:
            sub = f[subsets == label] if len(f) else f
            if len(sub):
                rows.append(_audit_row("activations", label, sub, "activation", why))
        if len(f) and (f["p_overhead"] > 0).any():
            rows.append(_audit_row("overhead", "all", f, "overhead",
                                   f"a constant {gib(float(f['p_overhead'].median()))} GiB that the tensor level does "
                                   "not hold (it stands for the CUDA context and runtime)", measured_zero=True))
        rep.h(3, fid)
        worst = max(rows, key=lambda r: abs(r[-1])) if rows else None
        if worst is not None:
            rep.p(f"Largest error source: {worst[0][0]}, {worst[0][1]} ({worst[0][4]} of the total at the median).")
        rep.table(["component", "points", "n", "predicted / measured", "effect on total", "reading"],
                  [r[0] for r in rows], "llrrrl")


def _audit_row(component: str, subset: str, sub, comp: str, why: str, measured_zero: bool = False) -> tuple:
    total = sub["m_total"].astype("float64")
    pred = sub[f"p_{comp}"].astype("float64")
    meas = 0.0 if measured_zero else sub[f"m_{comp}"].astype("float64")
    effect = float(((pred - meas) / total).median())
    ratios = (pred / meas).replace([np.inf, -np.inf], np.nan) if not measured_zero else None
    r = "n/a" if ratios is None or ratios.dropna().empty else ratio(float(ratios.median()))
    return ([component, subset, str(len(sub)), r, pct(effect, True), why], effect)


# --- per formula ---------------------------------------------------------------------------------------
def _spread(st: dict) -> str:
    return "n/a" if not st.get("n") else f"{pct(st['median'])} / {pct(st['p95'])} / {pct(st['max'])}"


def _formula_section(rep: Report, fid: str, raw, cal, cal_label: str) -> None:
    module = get(fid)
    rep.h(2, f"{fid}: by architecture, precision, attention, phase, batch and length")
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
        rep.h(3, title)
        rep.table([title, "points", "raw median / p95 / max", "raw max GiB", "raw bias", "raw under",
                   "cal. median / p95 / max", "cal. max GiB", "cal. bias", "cal. under", "cal. worst under"], rows)


def _excluded_section(rep: Report, dataset) -> None:
    rep.h(2, "Excluded points")
    if not dataset.excluded:
        rep.p("None: every record has status ok.")
        return
    groups: dict[tuple[str, str], list[str]] = {}
    for e in dataset.excluded:
        message = re.sub(r"\d[\d,]*", "N", e["message"])[:160]  # sizes differ; the reason does not
        groups.setdefault((e["status"], message), []).append(e["label"])
    rows = [[status, len(labels), message or "–", sorted(labels)[0]]
            for (status, message), labels in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1]))]
    rep.p(f"{len(dataset.excluded)} records are not ok and count nowhere above (numbers in messages shown as N):")
    rep.table(["status", "records", "reason", "example"], rows, "lrll")


# --- formatting ------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[tuple]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            _, header, rows, align = block
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "image":  # figures live embedded in report.html only: results/ stays text
            out.append(f"*Figure: {block[2]} (embedded in report.html).*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = _html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:13px}"
         "th,td{border:1px solid #ccc;padding:3px 7px}th{background:#f2f2f2}td.r,th.r{text-align:right}"
         "code{background:#f4f4f4;padding:0 3px}img{max-width:100%}")


def html(blocks: Sequence[tuple], images: dict[str, bytes], title: str) -> str:
    """The blocks as one standalone HTML page, figures embedded as base64 PNG."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            _, header, rows, align = block
            cls = ['' if a == "l" else ' class="r"' for a in align]
            head = "".join(f"<th{c}>{_inline(h)}</th>" for h, c in zip(header, cls))
            body.append("<table><thead><tr>" + head + "</tr></thead><tbody>" + "".join(
                "<tr>" + "".join(f"<td{c}>{_inline(v)}</td>" for v, c in zip(row, cls)) + "</tr>" for row in rows)
                + "</tbody></table>")
        elif kind == "image":
            data = base64.b64encode(images[block[1]]).decode()
            body.append(f'<p><img alt="{_html.escape(block[2])}" src="data:image/png;base64,{data}"></p>')
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


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
    paths["html"].write_text(html(rep.blocks, rep.images, f"memcal accuracy report: {rep.name}"))
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
