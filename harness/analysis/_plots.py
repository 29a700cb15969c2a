"""The accuracy report's figures, as SVG text (matplotlib's Agg backend: no display needed).

Each function takes comparison frames (`_compare`: one row per point and formula) and returns an SVG
document; `_render` inlines it in the HTML page. Text stays text (`svg.fonttype = none`: crisp at any
zoom, searchable), and ids are salted with a fixed string and no date is written, so the same data
give the same bytes. Figures summarise (boxes, medians, bands) rather than draw every point: a
thousand markers per panel would make the page heavy and say nothing a box does not.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator  # noqa: E402

from estimator.format import pick_unit  # noqa: E402

__all__ = ["error_distribution", "error_by", "component_panels"]

COLORS = {"weights": "#4c72b0", "kv_cache": "#55a868", "activation": "#c44e52", "overhead": "#8172b2"}
LABELS = {"weights": "weights", "kv_cache": "KV cache", "activation": "activations", "overhead": "overhead"}
RAW, CAL, UNDER = "#9a9a9a", "#1f77b4", "#fbe3e3"
LINTHRESH = 0.01  # % : symlog is linear within ±0.01 %, where "exact" formulas sit
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "memcal-report", "font.size": 9, "axes.titlesize": 9,
         "font.family": "sans-serif"}


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pct_label(v: float, _pos=None) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    text = f"{a:,.0f}" if a >= 1 else f"{a:g}"
    return ("−" if v < 0 else "+") + text + " %"


def _symlog_pct(ax, axis: str = "x") -> None:
    """Signed error in % on a symmetric log scale: decades both ways, linear near 0."""
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    setter("symlog", linthresh=LINTHRESH, linscale=0.6)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(SymmetricalLogLocator(base=10, linthresh=LINTHRESH, subs=[1.0]))
    target.set_major_formatter(FuncFormatter(_pct_label))


def _thin_ticks(ax, axis: str = "x") -> None:
    """Every other decade when the range is wide: labels must not collide."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = [t for t in target.get_majorticklocs() if lo <= t <= hi]
    if len(ticks) > 9:
        keep = [t for t in ticks if t == 0 or round(np.log10(abs(t) / LINTHRESH)) % 2 == 0]
        target.set_ticks(keep)


def error_distribution(raw, calibrated, formulas: Sequence[str], calibrated_label: str) -> str:
    """The first screen's figure: per formula, the signed error of the total, raw and calibrated.

    Box: the middle half of the points; whiskers: 5th to 95th percentile; dots: the extremes. Left
    of 0 (shaded) a formula predicts less than was measured: a plan made with it can run out of memory.
    """
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(10.5, 0.55 * len(formulas) + 1.3))
        ys = np.arange(len(formulas))[::-1] * 1.0
        spans = []
        for y, fid in zip(ys, formulas):
            for frame, dy, color in ((raw, 0.17, RAW), (calibrated, -0.17, CAL)):
                e = frame.loc[frame["formula"] == fid, "rel_err"].dropna().to_numpy() * 100
                if not e.size:
                    continue
                spans += [e.min(), e.max()]
                ax.boxplot(e, positions=[y + dy], orientation="horizontal", widths=0.26, whis=(5, 95),
                           showfliers=False, patch_artist=True, manage_ticks=False,
                           boxprops={"facecolor": color, "edgecolor": color, "alpha": 0.55},
                           medianprops={"color": "black", "linewidth": 1.6},
                           whiskerprops={"color": color}, capprops={"color": color})
                ax.plot([e.min(), e.max()], [y + dy] * 2, "o", markersize=3, color=color)
        lo, hi = (min(spans), max(spans)) if spans else (-1.0, 1.0)
        lo, hi = min(lo * 1.8, -10 * LINTHRESH), max(hi * 1.8, 10 * LINTHRESH)
        _symlog_pct(ax)
        ax.set_xlim(lo, hi)
        _thin_ticks(ax)
        ax.axvspan(lo, 0, color=UNDER, zorder=0)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.text(lo, ys[0] + 0.55, "  ← underestimates: out-of-memory risk", color="#a33", va="center", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels(formulas, fontsize=9)
        ax.set_ylim(ys[-1] - 0.6, ys[0] + 0.8)
        ax.set_xlabel("error of the total, (predicted − measured) / measured  (log scale both ways; linear "
                      f"within ±{LINTHRESH:g} %)")
        ax.grid(axis="x", color="#e6e6e6", linewidth=0.6)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.55) for c in (RAW, CAL)]
        ax.legend(handles, ["as written", calibrated_label], loc="upper right", fontsize=8,
                  ncols=2, frameon=False, bbox_to_anchor=(1.0, 1.13))
        fig.tight_layout()
        return _svg(fig)


def error_by(raw, calibrated, formulas: Sequence[str], column: str, title: str, calibrated_label: str) -> str:
    """Signed error of the total against one workload dimension, raw and calibrated: per formula the
    median (line and dots) and the range of 5th to 95th percentile (band or bar)."""
    numeric = column in ("prompt_len", "batch")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.4), sharey=True)
        values = sorted(raw[column].dropna().unique(), key=lambda v: (not numeric, v))
        x_of = {v: (float(v) if numeric else float(i)) for i, v in enumerate(values)}
        for ax, frame, label in ((axes[0], raw, "as written"), (axes[1], calibrated, calibrated_label)):
            for k, fid in enumerate(formulas):
                f = frame[frame["formula"] == fid]
                if f.empty:
                    continue
                g = f.groupby(column)["rel_err"]
                med, p5, p95 = g.median() * 100, g.quantile(0.05) * 100, g.quantile(0.95) * 100
                offset = k - (len(formulas) - 1) / 2
                shift = 1.0 + 0.03 * offset if numeric else 0.07 * offset
                xs = np.array([x_of[v] * shift if numeric else x_of[v] + shift for v in med.index])
                ax.plot(xs, med.to_numpy(), "o-" if numeric else "o", color=f"C{k}", label=fid, markersize=3.5,
                        linewidth=1.2)
                ax.vlines(xs, p5.to_numpy(), p95.to_numpy(), color=f"C{k}", alpha=0.45, linewidth=2.2)
            if numeric:
                ax.set_xscale("log", base=2)
                ax.set_xticks([float(v) for v in values])
                ax.set_xticklabels([f"{v:,}" for v in values], fontsize=8)
                ax.minorticks_off()
            else:
                ax.set_xticks(range(len(values)))
                ax.set_xticklabels(values, rotation=30 if len(values) > 4 else 0, ha="right" if len(values) > 4
                                   else "center", fontsize=8)
            _symlog_pct(ax, "y")
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel(title)
            ax.set_title(label)
            ax.grid(axis="y", color="#e6e6e6", linewidth=0.6)
        lo, hi = axes[0].get_ylim()
        axes[0].set_ylim(min(lo, -10 * LINTHRESH), max(hi, 10 * LINTHRESH))
        _thin_ticks(axes[0], "y")
        axes[0].set_ylabel("error of the total (%)")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        return _svg(fig)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    unit, size = pick_unit(abs(v))
    x = v / size  # three significant digits, never in e-notation (pick_unit stops at GiB: 3,650 GiB)
    return f"{x:,.0f} {unit}" if abs(x) >= 100 else f"{x:.3g} {unit}"


def component_panels(raw, rows: Sequence[dict], formulas: Sequence[str]) -> str:
    """For a few workloads, one panel per component: a bar per formula beside the measured bar, each
    labelled with its size. Every component has its own scale, so a 2 GB constant does not flatten a
    10 MB cache; a bar past three times the measured value is cut at the edge, its label says so."""
    comps = ("weights", "kv_cache", "activation", "overhead")
    names = ["measured", *formulas]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), len(comps), figsize=(11.5, (0.21 * len(names) + 0.75) * len(rows)),
                                 squeeze=False)
        for r, point in enumerate(rows):
            f = raw[raw["point_id"] == point["point_id"]]
            for c, comp in enumerate(comps):
                ax = axes[r][c]
                measured = point[f"m_{comp}"]
                m = None if measured is None or measured != measured else float(measured)
                vals = [m] + [float(f.loc[f["formula"] == fid, f"p_{comp}"].iloc[0])
                              if (f["formula"] == fid).any() else None for fid in formulas]
                finite = [v for v in vals if v is not None]
                ref = m if m else max(finite, default=0.0)
                top = 3.0 * ref if ref > 0 else 1.0
                ys = np.arange(len(names))[::-1]
                for y, v, name in zip(ys, vals, names):
                    color = "#333333" if name == "measured" else COLORS[comp]
                    if v is None:
                        ax.text(0, y, " not measured", va="center", fontsize=7, color="#777")
                        continue
                    ax.barh(y, min(v, top), color=color, height=0.7, alpha=0.9 if name == "measured" else 0.75)
                    label = _fmt(v) + (" ▶" if v > top else "")
                    inside = min(v, top) > 0.6 * top
                    ax.text(min(v, top) * (0.98 if inside else 1.0) + (0 if inside else 0.02 * top), y, label,
                            va="center", ha="right" if inside else "left", fontsize=6.5,
                            color="white" if inside else "#222")
                if m is not None:
                    ax.axvline(m, color="black", linewidth=0.8, linestyle="--")
                ax.set_xlim(0, top)
                ax.set_xticks([])
                ax.set_yticks(ys)
                ax.set_yticklabels(names if c == 0 else [""] * len(names), fontsize=7)
                ax.tick_params(axis="y", length=0)
                for side in ("top", "right", "bottom"):
                    ax.spines[side].set_visible(False)
                ax.set_title(LABELS[comp] + (f"\n{point['title']}" if c == 0 else "\n"), fontsize=8, loc="left")
        fig.tight_layout(h_pad=1.2)
        return _svg(fig)
