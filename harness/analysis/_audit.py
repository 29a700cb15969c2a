"""The accuracy report's component tables: each formula's components against the measured ones,
where memcal's formula is exact and where its error is, and the seed audit (where each seed formula
fails, and which of its known simplifications explain it). Collapsed in the page; every row is a
number the figures summarise.
"""
from __future__ import annotations

import numpy as np

from estimator.format import pick_unit

from ._numbers import gib, pct, ratio

__all__ = ["components_section", "memcal_section", "audit_section", "SEEDS"]

SEEDS = ("per-token", "bit-width", "gqa-flash-notebook", "interactive-calculator", "gguf-cheat-sheet")


# --- components ------------------------------------------------------------------------------------------
COMPONENT_LABELS = (("weights", "weights"), ("kv_cache", "KV cache"), ("activation", "activations"),
                    ("overhead", "overhead"))


def components_section(rep, raw, formulas) -> None:
    rep.h(2, "Components (as written): table", collapsed=True)
    unit, size = pick_unit(float(raw["m_total"].astype("float64").median()))
    rep.p("Each formula's components against the measured ones: weights and KV cache as the record holds them; "
          "activations = tensor-level peak − weights − KV cache; overhead = device total − allocated peak "
          "(cuda; mps: reserved − allocated), allocated − tensor-level peak (cpu), not measured on the dry run (the "
          "tensor-level peak holds none: a formula's overhead is all error there). Ratios and errors over the points "
          "where the measured component is positive; sizes in {unit}; every point's bytes are in comparison.csv.")

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
def memcal_section(rep, raw, oof, formulas) -> None:
    if "memcal" not in formulas:
        return
    m = raw[raw["formula"] == "memcal"]
    rep.h(2, "memcal's formula: exact components and where the error is", collapsed=True)
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


def audit_section(rep, raw, dataset, formulas) -> None:
    seeds = [f for f in formulas if f in SEEDS]
    if not seeds:
        return
    rep.h(2, "Seed audit: where each seed formula fails, and why", collapsed=True)
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
