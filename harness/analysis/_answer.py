"""The accuracy report's first screen: the answers a reader comes for, in words, then where the data
come from and what its terms mean.

A reader sizing hardware, or choosing a formula, asks: which formula can I trust on data like these,
how far off is each one (typically and at worst), and how often does each predict too little, so
that a machine sized by it runs out of memory? `answers` says that in one sentence per question;
the figure beside it (`_plots.error_distribution`) shows the same numbers. Raw numbers only here:
formatting (`pct`) is the report's.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["answers", "provenance", "terms", "TARGET_WORDS"]

TARGET_WORDS = {"tensor": "tensor-level peak", "allocator": "allocated peak", "device": "device total"}
DEVICE_WORDS = {"cpu": "measured on the CPU", "dry-run": "traced on the dry run", "cuda": "measured on a CUDA GPU",
                "mps": "measured on Apple MPS"}


def _names(fids: Sequence[str]) -> str:
    fids = list(fids)
    return fids[0] if len(fids) == 1 else ", ".join(fids[:-1]) + " and " + fids[-1]


def _grouped(formulas: Sequence[str], text: Callable[[str], str]) -> list[tuple[list[str], str]]:
    """Formulas whose numbers read the same (two seeds can be one formula) share one clause."""
    groups: dict[str, list[str]] = {}
    for fid in formulas:
        groups.setdefault(text(fid), []).append(fid)
    return [(fids, t) for t, fids in groups.items()]


def answers(raw: dict, cal: dict, formulas: Sequence[str], cal_words: str, pct) -> list[str]:
    """One sentence per reader question. ``raw``/``cal``: formula -> `error_stats` of the total.

    The formula to trust is the one with the smallest 95th percentile of |error| as written (then the
    smallest worst, then median): a few outlying points should not hide which formula is right almost
    everywhere, and the sentence names its worst error and its underestimates all the same.
    """
    formulas = [f for f in formulas if raw.get(f, {}).get("n")]
    if not formulas:
        return ["No point was measured: there is nothing to compare."]

    def rank(stats: dict) -> list[str]:
        fids = [f for f in formulas if stats.get(f, {}).get("n")]
        return sorted(fids, key=lambda f: (stats[f]["p95"], stats[f]["max"], stats[f]["median"], f))
    ranked = rank(raw)
    best, s = ranked[0], raw[ranked[0]]
    risk = ("and it never predicts less than was measured" if s["under_share"] == 0 else
            f"but it predicts too little on {pct(s['under_share'])} of the points (by up to "
            f"{pct(-s['worst_under'])}), so leave that much headroom")
    first = (f"**Which formula to trust:** {best}, within {pct(s['p95'])} on 95 % of the points. Its total is off "
             f"by {pct(s['median'])} at the median and {pct(s['max'])} at worst, {risk}")
    if len(ranked) > 1:
        n = raw[ranked[1]]
        first += f"; the next best, {ranked[1]}, is within {pct(n['p95'])} on 95 % of the points"
    out = [first + "."]
    c_ranked = rank(cal)
    if c_ranked and c_ranked[0] != best:
        c = cal[c_ranked[0]]
        out.append(f"**After calibration** ({cal_words}), {c_ranked[0]} does best: within {pct(c['p95'])} on 95 % of "
                   f"the points, {pct(c['median'])} at the median, {pct(c['max'])} at worst.")

    def spread(fid: str) -> str:
        text = f"{pct(raw[fid]['median'])} / {pct(raw[fid]['max'])}"
        return text + (f" → {pct(cal[fid]['median'])} / {pct(cal[fid]['max'])}" if cal.get(fid, {}).get("n") else "")
    out.append("**How far off each formula is** (median / worst error of the total, as written → calibrated): "
               + "; ".join(f"{_names(f)} {t}" for f, t in _grouped(formulas, spread)) + ".")

    def under(stats: dict) -> str:
        return "" if not stats.get("n") or stats["under_share"] == 0 else \
            f"{pct(stats['under_share'])} (worst {pct(stats['worst_under'], True)})"

    def listing(stats: dict) -> str:
        clauses = [f"{_names(f)} on {t}" for f, t in _grouped(formulas, lambda f: under(stats.get(f, {}))) if t]
        return ", ".join(clauses) if clauses else "none"
    never = [f for f in formulas if not under(raw[f]) and not under(cal.get(f, {}))]
    text = ("**How often each predicts too little** (a machine sized by it runs out of memory; share of the points, "
            "and the worst error): as written, "
            f"{listing(raw)}; calibrated, {listing(cal)}")
    if never and len(never) < len(formulas):
        text += f"; {_names(never)} never"
    out.append(text + ".")
    return out


def provenance(dataset, pct) -> list[str]:
    """One line per results file: what, where, with which software; then the points used."""
    lines = []
    for s in dataset.sources:
        commit = (s.get("commit") or "?")[:10] + (" with uncommitted changes" if s.get("dirty") else "")
        lines.append(f"`{Path(s['path']).name}`: {s.get('records')} records ({s.get('ok')} ok) of experiment "
                     f"`{s.get('experiment')}`, {DEVICE_WORDS.get(s.get('device'), s.get('device'))} "
                     f"({s.get('device_name')}) with torch {s.get('torch')}, transformers {s.get('transformers')}, "
                     f"bitsandbytes {s.get('bitsandbytes')}; memcal commit {commit}; {(s.get('created') or '?')[:10]}.")
    counts = Counter(e["status"] for e in dataset.excluded)
    excluded = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    lines.append(f"{len(dataset.points)} points used (status ok; one per point id, the median repeat). Excluded "
                 f"records: {excluded} (listed at the end). Data fingerprint `{dataset.fingerprint}`; "
                 f"{len(dataset.specs)} models.")
    return lines


def mixed_devices(dataset, target: str) -> str | None:
    """Words for a dataset that mixes devices: what it is, and why its points can be read together."""
    devices = Counter(p.get("device") for p in dataset.points)
    if len(devices) < 2:
        return None
    parts = _names([f"{n} {DEVICE_WORDS.get(d, d).replace('measured on ', 'on ').replace('traced on ', 'on ')}"
                    for d, n in sorted(devices.items())])
    text = (f"These data combine devices on purpose: {parts}. The dry run builds the model on fake tensors, so "
            "nothing is allocated and models of any size can be traced, and it counts the same tensors a real run "
            "holds (checked to the byte against CPU runs).")
    if target == "tensor":
        return text + (" Both therefore measure the same tensor-level peak, and their errors are read together; "
                       "the per-point table's device column tells them apart.")
    return text + f" The dry run has no {TARGET_WORDS[target]}: its points count nowhere in this report."


def terms(target: str, cal_words: str) -> list[str]:
    """The report's words, defined once ("term: definition")."""
    return [
        "tensor-level peak: the most bytes held by live tensors at any moment of the run (weights, KV cache and "
        "activations, each storage counted once); what the dry run measures and what memcal's formula models",
        "allocated: the allocator's peak (`max_memory_allocated` on CUDA): the tensors plus the allocator's "
        "rounding and kernels' scratch buffers that never become tensors",
        "reserved: what PyTorch's caching allocator holds from the device (`max_memory_reserved`): allocated plus "
        "freed blocks kept for reuse",
        "device total: what the device reports in use by the process: reserved plus the CUDA context, library "
        "workspaces and other memory outside PyTorch; what an out-of-memory error hits",
        f"error: (predicted − measured) / measured, for the total against the {TARGET_WORDS[target]}; worst is the "
        "largest error either way; negative means the formula predicts too little",
        "as written: the formula exactly as its source gives it; calibrated: its activation and overhead terms "
        f"scaled and offset by factors fitted on measured points (weights and KV cache are never corrected); "
        f"here {cal_words}",
    ]
