"""The seed audit: every worked example of the five seeds against its own formula, as Markdown.

``python -m estimator.audit > docs/seed-audit.md`` regenerates the committed document; a test checks
that the two are equal. The numbers come from :mod:`estimator.seed_examples`; this module only formats.
"""
from __future__ import annotations

import sys

from .seed_examples import EXAMPLES, SEEDS, SeedExample

COMMAND = "python -m estimator.audit > docs/seed-audit.md"

TITLES = {
    "000": "a guide to total inference memory (per-token activations, MHA cache, ~100 MB)",
    "001": "a formula sheet: M = t(p + 3lbsh)/8 + o",
    "002": "a notebook with vanilla, GQA and FlashAttention variants",
    "003": "an interactive calculator on 002's formulas (phi-4 transcript)",
    "004": "a cheat sheet: precisions, GGUF, 2·B·S·H·L·P, B·S·H·L·2, 1–2 GB",
}
UNITS = {
    "000": "It writes GB and MB for binary units: 708,673,536 bytes is \"0.66 GB\" only as GiB. Compared in GiB/MiB.",
    "001": "Decimal MB and GB, and GiB where it says so. Compared in the same.",
    "002": "GB = 1e9, each figure printed as `round(x, 2)` (trailing zeros dropped). Compared in GB.",
    "003": "As 002.",
    "004": "It defines GB = 1,073,741,824 bytes (÷1024³), so its values are compared in GiB; "
           "many of its examples are in fact decimal GB or match neither unit.",
}
LEAVES_OUT = {
    "000": [
        "Activations for one token per layer (N·B·d_model): no sequence length, so a prefill of s tokens "
        "(s·d_model per layer, the MLP intermediate, the attention scores) is not counted.",
        "The cache uses d_model for keys and values (MHA): a GQA/MQA model caches num_kv_heads·head_dim per "
        "token and layer, a fraction of it, so the formula overestimates those models' caches.",
        "One bytes-per-element for weights, activations and cache; no quantization scales.",
        "Overhead a fixed ~100 MiB: no CUDA context, no allocator reserve or fragmentation, no kernel workspaces.",
        "Its worked cache (2,048 bytes per position) omits the bytes per element, and its total adds only "
        "parameters and overhead.",
    ],
    "001": [
        "One bit width t for weights, activations and KV cache: with 4- or 8-bit weights it counts activations "
        "and the cache at 4 or 8 bits, though they are computed and cached in 16 bits.",
        "a = l·b·s·h·t/8: one hidden-size tensor per layer, all layers kept; no attention scores, no MLP "
        "intermediate, no logits.",
        "k uses the hidden size h: it ignores GQA (for Llama 3 8B, 8 KV heads of 32, the real cache is 4× smaller).",
        "o is a constant per operating system (2 GB or 5 GB), whatever the device and framework.",
    ],
    "002": [
        "Activations and KV cache at a fixed 2 bytes per element, whatever the bit width or KV dtype.",
        "The GQA KV cache uses h/g per token and layer where g·h/a (g KV heads × head_dim) is cached: the two "
        "agree only when a = g², as for Llama-3.3-70B (64 = 8²); for phi-4 (a 40, g 10) it is 2.5× too small.",
        "kv_heads comes from `hasattr(config, \"num_key_value_heads\")`: a Llama-family MHA config (g = a) takes "
        "the GQA path, and its KV cache, 2·L·s·b·(h/a)·2, is a-fold too small.",
        "The GQA activation variant puts g in place of a in the score term 4·g·s²·b, though the scores have one "
        "row per query head; the FlashAttention variant ignores GQA (the notebook says so).",
        "No overhead term at all (CUDA context, allocator, workspaces); weights n·bits/8 with no quantization scales.",
        "One s for activations and cache: a decode step's activations (one token) are not separated from a prefill's.",
    ],
    "003": [
        "The 002 notebook's formulas, so the same omissions; its transcript agrees with that arithmetic to every "
        "printed digit.",
        "Its phi-4 KV cache, 1.34 GB, uses h/g = 512 per token and layer; phi-4 caches g·head_dim = 1,280, "
        "2·40·16,384·1·1,280·2 = 3,355,443,200 bytes = 3.36 GB.",
        "It asks for the weights' bit width only: the KV cache and activations stay at 2 bytes.",
    ],
    "004": [
        "KV = 2·B·S·H·L·P uses the hidden size H: it ignores GQA (Llama 2 70B and Llama 3 8B have 8 KV heads: "
        "its cache is 8× too large for the 70B, 4× for the 8B).",
        "Activations B·S·H·L·2: every layer kept, a fixed factor 2 (not the dtype's bytes); no attention scores, "
        "no MLP intermediate, no logits.",
        "Its examples are inconsistent with its own ÷1024³: §1, §5 and §6 weights are decimal GB (70e9 × 2 = "
        "\"140 GB\"), and most KV and activation figures match no reading of its formula (the 1M-token KV "
        "\"128 GB\" is what 8 KV heads give for 2^20 tokens).",
        "Its Llama 3 8B file-size table does not follow its own bytes per parameter (FP16 ~13.0 GB for 8B × 2 bytes).",
        "Its verdicts follow the slips: Example 2's \"Optimal Solution\" (79 GB, fits an 80 GB A100) is 114.60 GiB "
        "by its formula and does not fit; Example 1 (7.73 GiB by the formula) still fits 24 GB.",
        "Overhead a constant 1–2 GB.",
    ],
}
COMMON = [
    "No seed counts the logits of a plain forward over the prompt: b·s·vocab elements (Llama 3 8B, vocab "
    "128,256, s = 8,192: 2.1 GB per sequence in bf16).",
    "Framework overhead is a constant (000: ~100 MiB, 001: 2 or 5 GB, 004: 1–2 GB) or absent (002, 003); none "
    "models the CUDA context, the caching allocator or kernel workspaces.",
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: float, unit: str, digits: int) -> str:
    if unit in ("bytes", "bits"):
        return f"{round(value):,} {unit}"
    text = f"{value:,.{digits}f}"
    return f"{text}%" if unit == "%" else f"{text} {unit}"


def _row(ex: SeedExample) -> str:
    value = ex.formula_value()
    agrees = ex.agrees()
    why = ex.slip or (f"note: {ex.note}" if ex.note else "")
    cells = [ex.key, ex.label, ex.inputs, f"`{ex.quote}`", _number(ex.printed, ex.unit, ex.digits),
             _number(value, ex.unit, ex.digits if ex.unit in ("bytes", "bits") else ex.digits + 2),
             "yes" if agrees else "**no**", why]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _seed_section(short: str) -> list[str]:
    rows = [e for e in EXAMPLES if e.seed == SEEDS[short]]
    bad = sum(not e.agrees() for e in rows)
    lines = [f"## {short}: {TITLES[short]}", "", f"Seed file `{SEEDS[short]}`. {UNITS[short]}", "",
             f"{len(rows)} printed results: {len(rows) - bad} agree with the formula, {bad} do not.", "",
             "| key | example | inputs | seed text | printed | formula | agrees | why |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_row(e) for e in rows]
    lines += ["", "What the formula leaves out:", ""] + [f"- {item}" for item in LEAVES_OUT[short]] + [""]
    return lines


def audit_markdown() -> str:
    """docs/seed-audit.md, rendered from estimator.seed_examples."""
    lines = [f"<!-- Generated by `{COMMAND}`; do not edit by hand. -->", "",
             "# Seed audit: every worked example against its own formula", "",
             "Each row is a number a seed prints as the result of its formula, beside the value of that formula, "
             "as memcal implements it, for the same inputs and in the same unit. A row agrees when the formula's "
             "value rounds to the printed digits (within half a unit of the last printed digit). Where they "
             "disagree, memcal keeps the formula as written and the row says why.", "",
             "| seed | file | printed results | agree | disagree |", "|---|---|---|---|---|"]
    for short, name in SEEDS.items():
        rows = [e for e in EXAMPLES if e.seed == name]
        bad = sum(not e.agrees() for e in rows)
        lines.append(f"| {short} | `{name}` | {len(rows)} | {len(rows) - bad} | {bad} |")
    lines.append("")
    for short in SEEDS:
        lines += _seed_section(short)
    lines += quantized_section()
    lines += ["## Common to all seeds", ""] + [f"- {item}" for item in COMMON]
    return "\n".join(lines) + "\n"


# Quantized formats the seeds price by one bytes-per-parameter number (001: t/8 with the format's nominal
# bits; 004: its table), against the exact layout memcal prices (estimator/quant, issue 15).
QUANT_MODEL = "meta-llama/Llama-3.1-8B"
QUANT_CASES = (
    ("GPTQ 4-bit, group 128", {"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq"),
    ("AWQ 4-bit gemm, group 128", {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}, "awq"),
    ("FP8, 128x128 blocks", {"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8"),
    ("GGUF Q4_K_M", None, "Q4_K_M"),
    ("GGUF Q8_0", None, "Q8_0"),
    ("GGUF Q4_0", None, "Q4_0"),
)


def quantized_section() -> list[str]:
    """How far the seeds' bytes per parameter are from the exact layout of GPTQ/AWQ/FP8/GGUF."""
    from .catalogue import lookup
    from .formulas import gguf_cheat_sheet, memcal
    from .spec import spec_from_dict
    from .workload import Workload
    lines = ["## Quantized weights: the seeds' bytes per parameter against the exact layout", "",
             f"{QUANT_MODEL} ({lookup(QUANT_MODEL) and spec_from_dict(lookup(QUANT_MODEL)).parameters:,} parameters), "
             "bf16 compute. The seeds price every parameter at one width (001: t/8 with the format's nominal "
             "bits; 004: its table); the exact layout (memcal, `estimator/quant`) adds scales, zero points and "
             "group indices, keeps lm_head, embeddings and norms in bf16, and for GGUF follows llama.cpp's "
             "mixture (Q6_K output and some attn_v/ffn_down).", "",
             "| format | 001 bytes/param | 004 bytes/param | exact bytes/param | 001 error | 004 error |",
             "|---|---|---|---|---|---|"]
    for label, qc, flag in QUANT_CASES:
        config = dict(lookup(QUANT_MODEL))
        if qc:
            config["quantization_config"] = qc
        spec = spec_from_dict(config, QUANT_MODEL)
        p = spec.parameters
        exact = memcal.parameter_bytes(spec, Workload(weights="none" if qc else flag), "cuda") / p
        w = Workload(weights=flag)
        b001, b004 = w.weight_bits / 8, float(gguf_cheat_sheet.bytes_per_parameter(w))
        lines.append(f"| {label} | {b001:.4f} | {b004:.4f} | {exact:.4f} | {100 * (b001 / exact - 1):+.1f}% | "
                     f"{100 * (b004 / exact - 1):+.1f}% |")
    return lines + [""]


def main() -> None:
    sys.stdout.write(audit_markdown())


if __name__ == "__main__":
    main()
