"""The accuracy report's figures, as PNG bytes (matplotlib's Agg backend: no display needed).

Each function takes comparison frames (`_compare`: one row per point and formula) and returns the
PNG; `_report` embeds them in the HTML page.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from estimator.format import pick_unit  # noqa: E402

__all__ = ["predicted_vs_measured", "error_vs_length", "component_bars"]

COLORS = {"weights": "#4c72b0", "kv_cache": "#55a868", "activation": "#c44e52", "overhead": "#8172b2"}
LABELS = {"weights": "weights", "kv_cache": "KV cache", "activation": "activations", "overhead": "overhead"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def predicted_vs_measured(raw, calibrated, formulas: Sequence[str], calibrated_label: str = "calibrated") -> bytes:
    """One panel per formula: predicted total against measured peak, log-log, raw and calibrated."""
    unit, size = pick_unit(float(raw["m_total"].max()))
    fig, axes = _grid(len(formulas))
    for ax, fid in zip(axes, formulas):
        r, c = raw[raw["formula"] == fid], calibrated[calibrated["formula"] == fid]
        m = r["m_total"].astype("float64") / size
        ax.scatter(m, r["p_total"] / size, s=10, facecolors="none", edgecolors="#999999", label="raw")
        ax.scatter(c["m_total"].astype("float64") / size, c["p_total"] / size, s=8, color="#c44e52",
                   label=calibrated_label)
        values = np.concatenate([m.to_numpy(), (r["p_total"] / size).to_numpy(), (c["p_total"] / size).to_numpy()])
        values = values[values > 0]
        lo, hi = (values.min() / 1.5, values.max() * 1.5) if values.size else (1e-3, 1.0)
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(fid, fontsize=10)
        ax.set_xlabel(f"measured peak ({unit})")
        ax.set_ylabel(f"predicted total ({unit})")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("predicted vs measured (tensor-level peak); the line is exact")
    fig.tight_layout()
    return _png(fig)


def error_vs_length(raw, calibrated, formulas: Sequence[str], calibrated_label: str = "calibrated") -> bytes:
    """Signed relative error of the total against prompt length, raw and calibrated, per formula."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, frame, title in ((axes[0], raw, "raw"), (axes[1], calibrated, calibrated_label)):
        for k, fid in enumerate(formulas):
            f = frame[frame["formula"] == fid]
            if f.empty:
                continue
            jitter = 1.0 + 0.04 * (k - (len(formulas) - 1) / 2)
            ax.scatter(f["prompt_len"] * jitter, f["rel_err"] * 100, s=7, alpha=0.5, color=f"C{k}")
            med = f.groupby("prompt_len")["rel_err"].median()
            ax.plot(med.index * jitter, med.to_numpy() * 100, color=f"C{k}", label=fid, linewidth=1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(title)
    axes[0].set_ylabel("(predicted - measured) / measured, % (symlog)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("relative error of the total vs sequence length (line: median per length)")
    return _png(fig)


def component_bars(raw, rows: Sequence[dict], formulas: Sequence[str]) -> bytes:
    """Stacked bars for a few workloads: measured components, then each formula's (raw)."""
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 4.4), squeeze=False)
    for ax, point in zip(axes.flat, rows):
        f = raw[raw["point_id"] == point["point_id"]]
        unit, size = pick_unit(float(point["m_total"]))
        names = ["measured", *formulas]
        bottoms = np.zeros(len(names))
        for comp in ("weights", "kv_cache", "activation", "overhead"):
            measured = point[f"m_{comp}"]
            values = [0.0 if measured is None or measured != measured else max(float(measured), 0.0)]
            for fid in formulas:
                v = f.loc[f["formula"] == fid, f"p_{comp}"]
                values.append(float(v.iloc[0]) if len(v) else 0.0)
            values = np.array(values) / size
            ax.bar(range(len(names)), values, bottom=bottoms, color=COLORS[comp], label=LABELS[comp])
            bottoms += values
        measured_total = float(point["m_total"]) / size
        ax.axhline(measured_total, color="black", linewidth=0.8, linestyle="--")
        top = 3.0 * measured_total  # a seed's 2 GB constant would flatten everything else: clip, and say so
        top = 1.08 * min(top, max(float(bottoms.max()), measured_total)) if top > 0 else 1.0
        for x, total in enumerate(bottoms):
            if total > top:
                ax.annotate(f"{total:,.3g} {unit}", (x, top), xytext=(0, -12), textcoords="offset points",
                            ha="center", fontsize=6, rotation=90, va="top")
        ax.set_ylim(0, top)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(unit)
        ax.set_title(point["title"], fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("components for a few workloads (raw; dashed: measured peak)")
    return _png(fig)
