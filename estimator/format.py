"""Formatting for people: byte sizes and text tables. Calculation stays in the formulas.

The one home of byte formats, for the estimator and the harness alike: `human` (a number in a unit
the display names elsewhere, e.g. a column header), `human_bytes` (a number with its binary unit) and
`pick_unit` (the binary unit that suits a size).
"""
from __future__ import annotations

from .units import GB, GiB, KiB, MiB

UNITS = {"GB": GB, "GiB": GiB, "MiB": MiB, "KiB": KiB}
BINARY_UNITS = (("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def human(n: float, unit: str = "GiB", digits: int | None = 2) -> str:
    """``n`` bytes in ``unit``: ``digits`` decimals with thousands separators, or with ``digits=None``
    three significant digits (whole numbers from 1,000 up)."""
    v = n / UNITS[unit]
    if digits is None:
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return f"{v:,.{digits}f}"


def pick_unit(largest: float) -> tuple[str, int]:
    """The largest binary unit that ``largest`` bytes fill at least once: ("GiB", 2**30) ... ("bytes", 1)."""
    for name, size in BINARY_UNITS:
        if abs(largest) >= size:
            return name, size
    return "bytes", 1


def human_bytes(n: int | None) -> str:
    """'812 B', '4.00 KiB', '2.11 MiB', '1.50 GiB' (binary units); '–' when not measured."""
    if n is None:
        return "–"
    unit, size = pick_unit(n)
    return f"{n:,} B" if size == 1 else f"{n / size:,.2f} {unit}"


def table(rows: list[list[str]], header: list[str], align: str | None = None) -> str:
    """A plain aligned text table; `align` has one 'l' or 'r' per column."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def estimate_text(result, unit: str = "GiB") -> str:
    """The `memcal estimate` display: the spec and workload, then one row per formula."""
    spec, workload = result.spec, result.workload
    exact = result.to_dict()["model"]["parameters"]
    used = result.options.parameters or exact
    from . import quant
    lines = [f"model     {spec.describe()}", *(f"note      {n}" for n in spec.notes),
             f"workload  {workload.describe()}",
             f"weights   {quant.describe(spec, workload, result.options.device)[0]}"]
    if used != exact and used is not None:
        lines.append(f"params    {used:,} given by the user (the seed formulas use it; memcal's own does not)")
    for note in result.warnings:
        lines.append(f"warning   {note}")
    other = "GB" if unit == "GiB" else "GiB"
    header = ["formula", "source", "weights", "KV cache", "activations", "overhead", f"total {unit}",
              f"total {other}"]
    rows = [[fid, b.source.split("_")[0] if b.source != "memcal" else "memcal",
             *(human(x, unit) for x in (b.weights_bytes, b.kv_cache_bytes, b.activation_bytes,
                                        b.overhead_bytes, b.total_bytes)), human(b.total_bytes, other)]
            for fid, b in result.breakdowns.items()]
    lines += ["", f"sizes in {unit} ({'2^30' if unit == 'GiB' else '10^9'} bytes)", table(rows, header, "llrrrrrr")]
    notes = [f"  {fid}: {'; '.join(b.notes)}" for fid, b in result.breakdowns.items() if b.notes]
    notes += [f"  {fid}: no answer: {why}" for fid, why in result.refusals.items()]
    if notes:
        lines += ["", "notes", *notes]
    return "\n".join(lines)
