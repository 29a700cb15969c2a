"""Every worked example of the five seeds, as data: what the seed prints, and what its formula gives.

One row (:class:`SeedExample`) per number that a seed prints as the result of its formula. Each row
holds the seed's text (``quote``, an exact excerpt of the seed file), the printed value with the unit
it is compared in and its printed decimals, and ``compute``: the formula's value from memcal's
implementation (``estimator.formulas``), in bytes (or bits, or percent). A row agrees when the formula's
value rounds to the printed digits (half a unit of the last printed digit, ties included); ``slip``
says why where it does not. The golden tests (tests/test_seed_formulas.py) and the audit
(estimator/audit.py -> docs/seed-audit.md) are built on this table.

Units: "unit" is what the seed means, which is not always what it writes. Seed 000 writes GB/MB for
binary units (GiB/MiB); seed 001 uses decimal MB/GB (and says GiB where it means it); 002/003 use
GB = 1e9; seed 004 defines GB = 1,073,741,824 bytes (GiB) and is compared in that unit throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .formulas import bit_width, gguf_cheat_sheet, gqa_flash_notebook, per_token
from .formulas.base import Options
from .spec import spec_from_dict
from .units import GB, MB, GiB, MiB
from .workload import Workload

UNIT_SCALE = {"bytes": 1, "bits": 1, "%": 1, "MB": MB, "GB": GB, "MiB": MiB, "GiB": GiB}
SEEDS = {"000": "000_d18d661e8cad94ee.txt", "001": "001_768a92a03b0660d3.txt",
         "002": "002_09ea4fed18aa4268.txt", "003": "003_10c36e1468230229.txt",
         "004": "004_a1bdbce2595f72f1.txt"}


@dataclass(frozen=True)
class SeedExample:
    """One printed result of a seed and the formula's value for the same inputs."""

    key: str
    seed: str                     # seed file name
    label: str
    inputs: str
    quantity: str
    quote: str                    # exact excerpt of the seed file that prints the value
    printed: float
    unit: str                     # the unit the printed value means (a key of UNIT_SCALE)
    digits: int                   # decimals printed
    compute: Callable[[], int | float]  # the formula's value in bytes (bits, percent) via memcal
    slip: str | None = None       # why the printed value disagrees with the formula; None if it agrees
    note: str = ""                # a remark on an agreeing row

    def formula_value(self) -> int | float:
        raw = self.compute()
        return raw if UNIT_SCALE[self.unit] == 1 else raw / UNIT_SCALE[self.unit]

    def agrees(self) -> bool:
        tolerance = 0.5 * 10 ** -self.digits
        return abs(self.formula_value() - self.printed) <= tolerance * (1 + 1e-9)


def _llama(name: str, h: int, L: int, a: int, g: int, inter: int, vocab: int, family: str = "llama"):
    return spec_from_dict({"model_type": family, "_name_or_path": name, "hidden_size": h, "num_hidden_layers": L,
                           "num_attention_heads": a, "num_key_value_heads": g, "intermediate_size": inter,
                           "vocab_size": vocab}, name=name)


GPT_354M = spec_from_dict({"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16,
                           "vocab_size": 50257, "n_positions": 1024}, name="seed-000 GPT-style 354M")
LLAMA2_7B = _llama("meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, 32000)
LINGSHU_AS_001 = _llama("Lingshu-7B as seed 001 assumes it (l 32, h 4096)", 4096, 32, 32, 32, 11008, 32000)
LLAMA33_70B = _llama("meta-llama/Llama-3.3-70B-Instruct", 8192, 80, 64, 8, 28672, 128256)
PHI4 = _llama("microsoft/phi-4", 5120, 40, 40, 10, 17920, 100352, family="phi3")
LLAMA2_70B = _llama("meta-llama/Llama-2-70b-hf", 8192, 80, 64, 8, 28672, 32000)
LLAMA3_8B = _llama("meta-llama/Meta-Llama-3-8B", 4096, 32, 32, 8, 14336, 128256)


# --- 000 -----------------------------------------------------------------------------------------
def _b000(**kw):
    wl = Workload(batch=1, prompt_len=128, dtype="fp16", **kw)
    return per_token.estimate(GPT_354M, wl, Options(parameters=354_336_768))


_IN000 = "354,336,768 params, d_model 1,024, N 24, B 1, L 128, FP16"
_KV000 = ("its '2 x B x d_model = 2,048 bytes' counts elements: the formula's x 2 bytes per element makes "
          "4,096 bytes per position")


def _seed000() -> list[SeedExample]:
    s, row = SEEDS["000"], SeedExample
    total = "the seed adds only 0.66 GB + 0.1 GB; the formula (cache 12 MiB with bytes/element) gives " \
            "826,163,200 bytes = 0.7694 GiB"
    return [
        row("000-params-fp16", s, "Parameters, FP16", "354,336,768 params x 2 bytes", "parameters memory",
            "354,336,768 \\times 2 = 708,673,536 \\text{ bytes}", 708_673_536, "bytes", 0,
            lambda: _b000().weights_bytes),
        row("000-params-fp16-gb", s, "Parameters, FP16, in GB", "354,336,768 params x 2 bytes", "parameters memory",
            "708,673,536 \\text{ bytes} \\approx 0.66 \\text{ GB}", 0.66, "GiB", 2, lambda: _b000().weights_bytes,
            note="'GB' is GiB here: in decimal GB it would be 0.71"),
        row("000-params-int8", s, "Parameters, Int8", "354,336,768 params x 1 byte", "parameters memory",
            "354,336,768 \\times 1 = 354,336,768 \\text{ bytes}", 354_336_768, "bytes", 0,
            lambda: _b000(weights="int8").weights_bytes),
        row("000-params-int8-gb", s, "Parameters, Int8, in GB", "354,336,768 params x 1 byte", "parameters memory",
            "354,336,768 \\text{ bytes} \\approx 0.33 \\text{ GB}", 0.33, "GiB", 2,
            lambda: _b000(weights="int8").weights_bytes, note="'GB' is GiB here: in decimal GB it would be 0.35"),
        row("000-params-example", s, "Example, parameters memory", _IN000, "parameters memory",
            "\\text{Parameters Memory} = 0.66 \\text{ GB}", 0.66, "GiB", 2, lambda: _b000().weights_bytes),
        row("000-act-per-layer", s, "Example, activations per layer", "B 1, d_model 1,024, 2 bytes",
            "activation memory of one layer", "1 \\times 1,024 \\times 2 = 2,048 \\text{ bytes}", 2048, "bytes", 0,
            lambda: per_token.activation_bytes(1, 1, 1024, 2)),
        row("000-act-total", s, "Example, total activations", _IN000, "activation memory",
            "24 \\times 2,048 = 49,152 \\text{ bytes}", 49_152, "bytes", 0, lambda: _b000().activation_bytes),
        row("000-act-total-mb", s, "Example, total activations in MB", _IN000, "activation memory",
            "49,152 \\text{ bytes} \\approx 0.05 \\text{ MB}", 0.05, "MiB", 2, lambda: _b000().activation_bytes),
        row("000-kv-per-position", s, "Example, cache per layer per position", "B 1, d_model 1,024, 2 bytes",
            "KV cache of one layer and position", "2 \\times 1 \\times 1,024 = 2,048 \\text{ bytes}", 2048, "bytes", 0,
            lambda: per_token.cache_bytes(1, 1, 1, 1024, 2), slip=_KV000),
        row("000-kv-total", s, "Example, cache for L = 128", _IN000, "KV cache",
            "24 \\times 128 \\times 2,048 = 6,291,456 \\text{ bytes}", 6_291_456, "bytes", 0,
            lambda: _b000().kv_cache_bytes, slip="built on the 2,048-byte slip: N x L x 2 x B x d_model x 2 "
            "bytes = 12,582,912 bytes"),
        row("000-kv-total-mb", s, "Example, cache for L = 128 in MB", _IN000, "KV cache",
            "6,291,456 \\text{ bytes} \\approx 6 \\text{ MB}", 6, "MiB", 0, lambda: _b000().kv_cache_bytes,
            slip="12,582,912 bytes = 12 MiB by the formula (bytes per element omitted)"),
        row("000-list-activations", s, "Total estimate list, activations", _IN000, "activation memory",
            "- **Activations**: ~0.05 MB", 0.05, "MiB", 2, lambda: _b000().activation_bytes),
        row("000-list-cache", s, "Total estimate list, cache", _IN000, "KV cache", "- **Cache**: ~6 MB", 6,
            "MiB", 0, lambda: _b000().kv_cache_bytes, slip="12 MiB by the formula (bytes per element omitted)"),
        row("000-list-overhead", s, "Total estimate list, overheads", _IN000, "overheads",
            "- **Overheads**: ~100 MB", 100, "MiB", 0, lambda: _b000().overhead_bytes,
            note="memcal reads ~100 MB as 100 MiB, the seed's binary units"),
        row("000-overhead-gb", s, "Total, overheads in GB", _IN000, "overheads",
            "0.66 \\text{ GB} + 0.1 \\text{ GB}", 0.1, "GiB", 1, lambda: _b000().overhead_bytes),
        row("000-total", s, "Total memory estimate", _IN000, "total",
            "\\text{Total Memory} \\approx 0.66 \\text{ GB} + 0.1 \\text{ GB} = 0.76 \\text{ GB}", 0.76, "GiB", 2,
            lambda: _b000().total_bytes, slip=total),
        row("000-conclusion", s, "Conclusion, total", _IN000, "total", "**Approximately 0.76 GB**", 0.76, "GiB", 2,
            lambda: _b000().total_bytes, slip=total),
    ]


# --- 001 -----------------------------------------------------------------------------------------
def _b001(spec=LLAMA2_7B, s: int = 512):
    return bit_width.estimate(spec, Workload(batch=1, prompt_len=s, dtype="fp16"),
                              Options(parameters=7_000_000_000, os="macos"))


def _seed001() -> list[SeedExample]:
    s, row = SEEDS["001"], SeedExample
    a512, a2048 = "Llama 2 7B: l 32, h 4096, b 1, s 512, t 16", "Llama 2 7B: l 32, h 4096, b 1, s 2048, t 16"
    k = "Lingshu-7B as assumed: l 32, h 4096, b 1, t 16, s "
    mac = "Llama 2 7B on Mac: p 7,000,000,000, l 32, h 4096, b 1, s 512, t 16, o 5,000,000,000"
    return [
        row("001-a-layer-512", s, "Activations per layer, s = 512", a512, "a per layer",
            "= 4,194,304 \\ bytes", 4_194_304, "bytes", 0, lambda: bit_width.activation_bytes(1, 1, 512, 4096, 16)),
        row("001-a-layer-512-mb", s, "Activations per layer, s = 512, in MB", a512, "a per layer",
            "4,194,304 \\ bytes ≈ 4.2 MB", 4.2, "MB", 1, lambda: bit_width.activation_bytes(1, 1, 512, 4096, 16)),
        row("001-a-512", s, "Activations, s = 512", a512, "a", "a = 32 \\times 4.2 \\ MB ≈ 134.4 \\ MB", 134.4,
            "MB", 1, lambda: _b001().activation_bytes,
            slip="multiplies the rounded 4.2 MB: 32 x 4,194,304 bytes = 134,217,728 bytes = 134.2 MB"),
        row("001-a-layer-2048", s, "Activations per layer, s = 2048", a2048, "a per layer",
            "\\cdot 4096 \\cdot 16}{8} ≈ 134.2 \\ MB", 134.2, "MB", 1,
            lambda: bit_width.activation_bytes(1, 1, 2048, 4096, 16),
            slip="1 x 2048 x 4096 x 16 / 8 = 16,777,216 bytes = 16.8 MB; 134.2 MB is all 32 layers at s = 512"),
        row("001-a-2048", s, "Activations, s = 2048", a2048, "a", "a = 32 \\times 134.2 \\ MB ≈ 4.3 \\ GB", 4.3,
            "GB", 1, lambda: _b001(s=2048).activation_bytes,
            slip="carries the wrong per-layer figure: 32 x 16,777,216 bytes = 536,870,912 bytes = 0.54 GB"),
        row("001-k-512", s, "KV cache, s = 512", k + "512", "k", "≈ 268,435,456 \\ bytes", 268_435_456, "bytes", 0,
            lambda: _b001(LINGSHU_AS_001).kv_cache_bytes),
        row("001-k-512-mb", s, "KV cache, s = 512, in MB", k + "512", "k", "bytes ≈ 268.44 \\ MB", 268.44, "MB", 2,
            lambda: _b001(LINGSHU_AS_001).kv_cache_bytes),
        row("001-k-2048", s, "KV cache, s = 2048", k + "2048", "k", "≈ 1,073,741,824 \\ bytes", 1_073_741_824,
            "bytes", 0, lambda: _b001(LINGSHU_AS_001, 2048).kv_cache_bytes),
        row("001-k-2048-gb", s, "KV cache, s = 2048, in GB", k + "2048", "k",
            "1,073,741,824 \\ bytes \\approx 1.1 \\ GB", 1.1, "GB", 1,
            lambda: _b001(LINGSHU_AS_001, 2048).kv_cache_bytes, note="decimal GB (it is 1.0 GiB)"),
        row("001-mac-numerator", s, "Mac example, t(p + 3lbsh)", mac, "t(p + 3lbsh), in bits",
            "\\dfrac{115,221,225,472}{8}", 115_221_225_472, "bits", 0,
            lambda: 8 * (_b001().total_bytes - _b001().overhead_bytes)),
        row("001-mac-mak", s, "Mac example, m + a + k", mac, "m + a + k", "14,402,653,184 + 5,000,000,000",
            14_402_653_184, "bytes", 0, lambda: _b001().total_bytes - _b001().overhead_bytes),
        row("001-mac-total", s, "Mac example, M", mac, "M", "= 19,402,653,184 \\ bytes", 19_402_653_184, "bytes", 0,
            lambda: _b001().total_bytes),
        row("001-mac-total-gb", s, "Mac example, M in GB", mac, "M", "\\approx 19.41 \\ GB", 19.41, "GB", 2,
            lambda: _b001().total_bytes, slip="19,402,653,184 bytes = 19.4027 GB, which rounds to 19.40 (19.41 "
            "is rounded up)"),
        row("001-mac-total-gib", s, "Mac example, M in GiB", mac, "M", "\\approx 18.07 \\ GiB", 18.07, "GiB", 2,
            lambda: _b001().total_bytes),
    ]


# --- 002 and 003 ---------------------------------------------------------------------------------
def _fig(spec, batch: int, s: int, params: int):
    wl = Workload(batch=batch, prompt_len=s, dtype="bf16", attention="flash")
    return gqa_flash_notebook.figures(spec, wl, Options(parameters=params, kv_cache=True))


def _notebook_rows(seed: str, spec, batch: int, s: int, params: int, inputs: str, values: list) -> list:
    """The six printed figures of the notebook (002) or the tool (003); GB = 1e9, round(x, 2)."""
    fig = lambda: _fig(spec, batch, s, params)  # noqa: E731
    prefix = "Memory consumption of "
    quotes = {"model": "the model: ", "vanilla": "vanilla inference: ", "gqa": "inference with GQA: ",
              "flash": "inference with FlashAttention: ", "kv": "the KV cache (with GQA): "}
    getters = {"model": lambda: fig().model_bytes, "vanilla": lambda: fig().vanilla_bytes,
               "gqa": lambda: fig().gqa_bytes, "flash": lambda: fig().flash_bytes,
               "kv": lambda: fig().kv_cache_bytes, "total": lambda: fig().total_bytes}
    rows = []
    for name, printed, text in values:
        quote = f"Total Memory consumption (given the selected configuration): {text} GB" if name == "total" \
            else f"{prefix}{quotes[name]}{text} GB"
        note = "printed by str(round(x, 2)); the notebook sums rounded figures" if name == "total" else ""
        label = {"model": "model", "vanilla": "vanilla inference", "gqa": "inference with GQA",
                 "flash": "inference with FlashAttention", "kv": "KV cache (with GQA)", "total": "total"}[name]
        rows.append(SeedExample(f"{seed}-{name}", SEEDS[seed], f"Printed figure: {label}", inputs, label, quote,
                                printed, "GB", 2, getters[name], note=note))
    return rows


def _seed002() -> list[SeedExample]:
    inputs = "Llama-3.3-70B: L 80, h 8192, a 64, g 8; n 70.6, 16 bits, s 8192, b 16, FlashAttention, KV cache"
    return _notebook_rows("002", LLAMA33_70B, 16, 8192, 70_600_000_000, inputs, [
        ("model", 141.2, "141.2"), ("vanilla", 618.48, "618.48"), ("gqa", 129.39, "129.39"),
        ("flash", 68.85, "68.85"), ("kv", 42.95, "42.95"), ("total", 253.0, "253.0")])


def _seed003() -> list[SeedExample]:
    inputs = "phi-4: L 40, h 5120, a 40, g 10; n 14.7, 16 bits, s 16384, b 1, FlashAttention Y, KV Y"
    return _notebook_rows("003", PHI4, 1, 16384, 14_700_000_000, inputs, [
        ("model", 29.4, "29.4"), ("vanilla", 91.27, "91.27"), ("gqa", 26.26, "26.26"),
        ("flash", 5.39, "5.39"), ("kv", 1.34, "1.34"), ("total", 36.13, "36.13")])


# --- 004 -----------------------------------------------------------------------------------------
P70, P8 = 70_000_000_000, 8_000_000_000  # the sheet's "70B" and "8B"
_DEC = "decimal GB ({}); the sheet's own ÷1,073,741,824 gives {}"


def _b004(spec, params: int, S: int = 1, B: int = 1, overhead_gib: float = 2, **wl):
    workload = Workload(**{"batch": B, "prompt_len": S, "dtype": "fp16", **wl})
    return gguf_cheat_sheet.estimate_with(spec, workload, Options(parameters=params), overhead_gib=overhead_gib)


def _reduction(weights: str) -> float:
    """Size reduction vs FP16, in percent, from the formula's weights."""
    return 100 * (1 - _b004(LLAMA3_8B, P8, weights=weights).weights_bytes / _b004(LLAMA3_8B, P8).weights_bytes)


_GGUF_TABLE = [  # type, bits as printed, bytes/param as printed, printed size reduction, slip or note
    ("Q2_K", "2.0", "~0.25", 85, "its own 0.25 bytes/parameter gives 1 - 0.25/2 = 87.5%"),
    ("Q3_K_S", "3.0", "~0.375", 80, "its own 0.375 bytes/parameter gives 1 - 0.375/2 = 81.25%"),
    ("Q3_K_M", "3.0", "~0.375", 80, "its own 0.375 bytes/parameter gives 1 - 0.375/2 = 81.25%"),
    ("Q3_K_L", "3.0", "~0.375", 80, "its own 0.375 bytes/parameter gives 1 - 0.375/2 = 81.25%"),
    ("Q4_0", "4.5", "~0.56", 72, None), ("Q4_1", "5.0", "~0.625", 69, None),
    ("Q4_K_S", "4.0", "~0.5", 75, None), ("Q4_K_M", "4.0", "~0.5", 75, None),
    ("Q5_0", "5.5", "~0.69", 66, "note: 65.5%, a tie"), ("Q5_1", "6.0", "~0.75", 63, "note: 62.5%, a tie"),
    ("Q5_K_S", "5.0", "~0.625", 69, None), ("Q5_K_M", "5.0", "~0.625", 69, None),
    ("Q6_K", "6.0", "~0.75", 63, "note: 62.5%, a tie"), ("Q8_0", "8.5", "~1.06", 47, None),
]
_FILE_TABLE = [  # type, printed size (GB), its slip, printed "vs FP16", its slip or note
    ("Q8_0", 6.7, "8e9 x 1.06 bytes = 8,480,000,000 bytes = 7.90 GiB",
     51, "1 - 1.06/2 = 47% reduction (size 53% of FP16); 51% is the row's 6.7/13.0 as a size ratio, "
         "where the other rows print reductions"),
    ("Q5_K_M", 4.9, "8e9 x 0.625 bytes = 5,000,000,000 bytes = 4.66 GiB",
     62, "1 - 0.625/2 = 68.75%; 62% follows the row's 4.9/13.0"),
    ("Q4_K_M", 3.5, "8e9 x 0.5 bytes = 4,000,000,000 bytes = 3.73 GiB", 73, "1 - 0.5/2 = 75%"),
    ("Q3_K_M", 2.6, "8e9 x 0.375 bytes = 3,000,000,000 bytes = 2.79 GiB", 80, "1 - 0.375/2 = 81.25%"),
    ("Q2_K", 1.6, "8e9 x 0.25 bytes = 2,000,000,000 bytes = 1.86 GiB", 88, "note: 87.5%, a tie"),
]
_KV70 = "2 x 8 x 4,096 x 8,192 x 80 x 2 = 85,899,345,920 bytes = 80 GiB"
_KV8 = "2 x 1,000,000 x 4,096 x 32 x 2 = 524,288,000,000 bytes = 488.28 GiB; 128 GiB is what 8 KV heads " \
       "(width 1,024) give for 2^20 tokens"
_ACT8 = "1,000,000 x 4,096 x 32 x 2 = 262,144,000,000 bytes = 244.14 GiB; 64 GiB is B x 2^20 x 1,024 x L x 2 " \
        "(the KV width of 8 KV heads, not H)"
_W70 = _DEC.format("70e9 x 2 = 140e9 bytes", "130.39")
_W8Q4 = "8e9 x 0.5 bytes = 4,000,000,000 bytes = 3.73 GiB (3.5 is the file-size table's, not the formula's)"


def _row004(key, label, inputs, quantity, quote, printed, digits, compute, why=None, unit="GiB"):
    slip, note = (None, why[6:]) if why and why.startswith("note: ") else (why, "")
    return SeedExample(f"004-{key}", SEEDS["004"], label, inputs, quantity, quote, printed, unit, digits, compute,
                       slip=slip, note=note)


def _seed004_weights() -> list[SeedExample]:
    rows, formats = [], [("FP32", "4 bytes", {"dtype": "fp32"}, 280, 32, "280e9", "260.77", "32e9", "29.80"),
                         ("FP16", "2 bytes", {}, 140, 16, "140e9", "130.39", "16e9", "14.90"),
                         ("INT8", "1 byte", {"weights": "int8"}, 70, 8, "70e9", "65.19", "8e9", "7.45"),
                         ("INT4", "0.5 bytes", {"weights": "nf4"}, 35, 4, "35e9", "32.60", "4e9", None)]
    for fmt, bpp, wl, p70, p8, b70, g70, b8, g8 in formats:
        rows.append(_row004(f"s1-70b-{fmt.lower()}", f"§1 Llama 2 70B, {fmt}", f"70B params x {bpp}",
                            "model weights", f"- {fmt}: 70B × {bpp} = {p70} GB", p70, 0,
                            lambda wl=wl: _b004(LLAMA2_70B, P70, **wl).weights_bytes,
                            _DEC.format(f"70B x {bpp} = {b70} bytes", g70)))
        why = _DEC.format(f"8B x {bpp} = {b8} bytes", g8) if g8 else \
            "note: 3.73 GiB rounds to the printed 4 (the sheet computed 4e9 bytes in decimal GB)"
        rows.append(_row004(f"s1-8b-{fmt.lower()}", f"§1 Llama 3 8B, {fmt}", f"8B params x {bpp}", "model weights",
                            f"- {fmt}: 8B × {bpp} = {p8} GB", p8, 0,
                            lambda wl=wl: _b004(LLAMA3_8B, P8, **wl).weights_bytes, why))
    for q, bits, bpp, pct, why in _GGUF_TABLE:
        rows.append(_row004(f"s2-reduction-{q.lower()}", f"§2 GGUF types table, {q} size reduction",
                            f"{q}: {bpp} bytes/parameter vs FP16's 2", "size reduction vs FP16",
                            f"| **{q}** | {bits} | {bpp} | ~{pct}% |", pct, 0, lambda q=q: _reduction(q), why, "%"))
    rows.append(_row004("s2-8b-fp16", "§2 Llama 3 8B file sizes, FP16", "8B params x 2 bytes", "model weights",
                        "| FP16 | ~13.0 | Baseline |", 13.0, 1, lambda: _b004(LLAMA3_8B, P8).weights_bytes,
                        "8e9 x 2 bytes = 14.90 GiB (16.0 GB); ~13.0 follows neither"))
    for q, size, why_size, pct, why_pct in _FILE_TABLE:
        quote = f"| {q} | ~{size} | ~{pct}% |"
        rows.append(_row004(f"s2-8b-{q.lower()}", f"§2 Llama 3 8B file sizes, {q}", f"8B params, {q}",
                            "model weights", quote, size, 1,
                            lambda q=q: _b004(LLAMA3_8B, P8, weights=q).weights_bytes, why_size))
        rows.append(_row004(f"s2-8b-{q.lower()}-vs-fp16", f"§2 Llama 3 8B file sizes, {q} vs FP16",
                            f"8B params, {q}", "size reduction vs FP16", quote, pct, 0,
                            lambda q=q: _reduction(q), why_pct, "%"))
    return rows


def _seed004_kv_act() -> list[SeedExample]:
    kv70 = "Llama 2 70B: B 8, S 4,096, H 8,192, L 80, P 2"
    m8 = "Llama 3 8B: B 1, S 1,000,000, H 4,096, L 32, P 2"
    a70 = "Llama 2 70B: B {}, S 2,048, H 8,192, L 80"
    return [
        _row004("s3-kv-70b-numerator", "§3 KV, Llama 2 70B, b=8, s=4096: numerator", kv70,
                "2 x B x S x H x L x P, in bytes", "= 32,768 GB ÷ 1,073,741,824", 32_768, 0,
                lambda: _b004(LLAMA2_70B, P70, 4096, 8).kv_cache_bytes,
                "the product is 85,899,345,920 bytes; '32,768 GB' is neither that nor the result", "bytes"),
        _row004("s3-kv-70b", "§3 KV, Llama 2 70B, b=8, s=4096", kv70, "KV cache", "≈ 32 GB", 32, 0,
                lambda: _b004(LLAMA2_70B, P70, 4096, 8).kv_cache_bytes, _KV70),
        _row004("s3-kv-8b-numerator", "§3 KV, Llama 3 8B, 1M tokens: numerator", m8,
                "2 x B x S x H x L x P, in bytes", "= 524,288 GB ÷ 1,073,741,824", 524_288, 0,
                lambda: _b004(LLAMA3_8B, P8, 1_000_000).kv_cache_bytes,
                "the product is 524,288,000,000 bytes (524,288 million, written '524,288 GB')", "bytes"),
        _row004("s3-kv-8b", "§3 KV, Llama 3 8B, 1M tokens", m8, "KV cache", "≈ 128 GB", 128, 0,
                lambda: _b004(LLAMA3_8B, P8, 1_000_000).kv_cache_bytes, _KV8),
        _row004("s4-act-70b-b1", "§4 activations, Llama 2 70B, b=1, s=2048", a70.format(1), "activation memory",
                "≈ 2.5 GB", 2.5, 1, lambda: _b004(LLAMA2_70B, P70, 2048, 1).activation_bytes),
        _row004("s4-act-70b-b8", "§4 activations, Llama 2 70B, b=8, s=2048", a70.format(8), "activation memory",
                "≈ 20 GB", 20, 0, lambda: _b004(LLAMA2_70B, P70, 2048, 8).activation_bytes),
        _row004("s4-act-8b", "§4 activations, Llama 3 8B, 1M tokens", m8.removesuffix(", P 2"), "activation memory",
                "≈ 64 GB", 64, 0,
                lambda: _b004(LLAMA3_8B, P8, 1_000_000).activation_bytes, _ACT8),
    ]


# §5 and §6: each scenario as the sheet states it, and the formula's arguments (`_b004`).
_E2 = "Llama 2 70B, B 4, S 8,192, overhead 2 GiB, weights "
_SCENARIOS004 = {
    "8b-1m": ("Llama 3 8B, Q4_K_M, B 1, S 1,000,000, FP16 KV, overhead 2 GiB",
              (LLAMA3_8B, P8, 1_000_000), {"weights": "Q4_K_M"}),
    "8b-1m-int8kv": ("Llama 3 8B, Q4_K_M, B 1, S 1,000,000, INT8 KV, overhead 2 GiB",
                     (LLAMA3_8B, P8, 1_000_000), {"weights": "Q4_K_M", "kv_dtype": "int8"}),
    "70b-2k": ("Llama 2 70B FP16, B 1, S 2,048 ('2K'), overhead 2 GiB", (LLAMA2_70B, P70, 2048, 1), {}),
    "70b-32k": ("Llama 2 70B FP16, B 8, S 32,768 ('32K')", (LLAMA2_70B, P70, 32768, 8), {}),
    "8b-4k": ("Llama 3 8B, Q4_K_M, B 1, S 4,096, FP16 KV, overhead 1 GiB",
              (LLAMA3_8B, P8, 4096, 1), {"overhead_gib": 1, "weights": "Q4_K_M"}),
    "70b-8k-fp16": (_E2 + "FP16", (LLAMA2_70B, P70, 8192, 4), {}),
    "70b-8k-int8": (_E2 + "INT8", (LLAMA2_70B, P70, 8192, 4), {"weights": "int8"}),
    "70b-8k-q4": (_E2 + "Q4_K_M, FP16 KV", (LLAMA2_70B, P70, 8192, 4), {"weights": "Q4_K_M"}),
    "70b-8k-q4-int8kv": (_E2 + "Q4_K_M, INT8 KV", (LLAMA2_70B, P70, 8192, 4),
                         {"weights": "Q4_K_M", "kv_dtype": "int8"}),
}
# component -> (the quantity as the rows name it, the breakdown's field)
_COMPONENTS004 = {"weights": ("model weights", "weights_bytes"), "kv": ("KV cache", "kv_cache_bytes"),
                  "act": ("activation memory", "activation_bytes"), "overhead": ("overhead", "overhead_bytes"),
                  "total": ("total", "total_bytes")}
_T8 = "its rows sum to 197.5 (3.5 + 128 + 64 + 2); the formula's rows: 3.73 + 488.28 + 244.14 + 2 = 738.15 GiB"
_KV70_8K = "2 x 4 x 8,192 x 8,192 x 80 x 2 = 85,899,345,920 bytes = 80 GiB"
_ACT70_8K = "4 x 8,192 x 8,192 x 80 x 2 = 42,949,672,960 bytes = 40 GiB"
_Q4_70 = _DEC.format("70e9 x 0.5 = 35e9 bytes", "32.60")
# §6 Example 2's three plans: key, what, scenario, and per component its (quote, printed, slip); the
# activations and overhead rows are the same in all three.
_EX2_PLANS = (
    ("int8", "INT8", "70b-8k-int8", {
        "weights": ("- Use INT8: 70 GB (model weights)", 70, _DEC.format("70e9 x 1 = 70e9 bytes", "65.19")),
        "kv": ("- KV Cache (8K tokens, batch=4): ~64 GB", 64, _KV70_8K),
        "total": ("**Total: ~146 GB**", 146, "its rows sum to 146; the formula's: 65.19 + 80 + 40 + 2 = 187.19 GiB")}),
    ("better", "Q4_K_M, FP16 KV", "70b-8k-q4", {
        "weights": ("- Use Q4_K_M: ~35 GB (model weights)", 35, _Q4_70),
        "kv": ("- KV Cache (FP16): ~64 GB", 64, _KV70_8K),
        "total": ("**Total: ~111 GB**", 111, "its rows sum to 111; the formula's: 32.60 + 80 + 40 + 2 = 154.60 GiB")}),
    ("optimal", "Q4_K_M, INT8 KV", "70b-8k-q4-int8kv", {
        "weights": ("- Use Q4_K_M: ~35 GB", 35, _Q4_70),
        "kv": ("- KV Cache (INT8): ~32 GB", 32, "2 x 4 x 8,192 x 8,192 x 80 x 1 = 42,949,672,960 bytes = 40 GiB"),
        "total": ("**Total: ~79 GB**", 79, "its rows sum to 79; the formula's: 32.60 + 40 + 40 + 2 = 114.60 GiB")}),
)
_EX2_SHARED = {"act": ("- Activation Memory: ~10 GB", 10, _ACT70_8K), "overhead": ("- Overhead: 2 GB", 2, None)}
_EX2_NAMES = {"weights": "weights", "kv": "KV cache", "act": "activations", "overhead": "overhead", "total": "total"}


def _example2_rows():
    for key, what, scenario, parts in _EX2_PLANS:
        for part, name in _EX2_NAMES.items():
            quote, printed, why = {**parts, **_EX2_SHARED}[part]
            yield (f"s6-ex2-{key}-{part}", f"§6 Example 2 ({what}), {name}", scenario, part, quote, printed, 0, why)


# key, label, scenario, component, quote, printed, digits, slip (or "note: ...")
_TOTALS004 = [
    ("s5-weights", "§5 table, Llama 3 8B 1M, weights", "8b-1m", "weights", "| Model Weights (Q4_K_M) | 3.5 |", 3.5, 1,
     _W8Q4),
    ("s5-kv", "§5 table, Llama 3 8B 1M, KV cache", "8b-1m", "kv", "| KV Cache | 128 |", 128, 0, _KV8),
    ("s5-act", "§5 table, Llama 3 8B 1M, activations", "8b-1m", "act", "| Activation Memory | 64 |", 64, 0, _ACT8),
    ("s5-overhead", "§5 table, Llama 3 8B 1M, overhead", "8b-1m", "overhead", "| System Overhead | 2 |", 2, 0, None),
    ("s5-total", "§5 table, Llama 3 8B 1M, total", "8b-1m", "total", "| **Total** | **197.5 GB** |", 197.5, 1, _T8),
    # §5 scenarios of Llama 2 70B
    ("s5-sc1-weights", "§5 Scenario 1, weights (FP16)", "70b-2k", "weights", "- Model Weights (FP16): 140 GB", 140, 0,
     _W70),
    ("s5-sc1-kv", "§5 Scenario 1, KV cache", "70b-2k", "kv", "- KV Cache: ~16 GB", 16, 0,
     "2 x 1 x 2,048 x 8,192 x 80 x 2 = 5,368,709,120 bytes = 5 GiB"),
    ("s5-sc1-act", "§5 Scenario 1, activations", "70b-2k", "act", "- Activation Memory: ~2.5 GB", 2.5, 1, None),
    ("s5-sc1-overhead", "§5 Scenario 1, overhead", "70b-2k", "overhead", "- Overhead: 2 GB", 2, 0, None),
    ("s5-sc1-total", "§5 Scenario 1, total", "70b-2k", "total", "**Total: ~160.5 GB**", 160.5, 1,
     "its rows sum to 160.5; the formula's: 130.39 + 5 + 2.5 + 2 = 139.89 GiB"),
    ("s5-sc2-weights", "§5 Scenario 2, weights (FP16)", "70b-32k", "weights", "- Model Weights (FP16): 140 GB", 140, 0,
     _W70),
    ("s5-sc2-kv", "§5 Scenario 2, KV cache", "70b-32k", "kv", "- KV Cache: ~256 GB", 256, 0,
     "2 x 8 x 32,768 x 8,192 x 80 x 2 = 687,194,767,360 bytes = 640 GiB"),
    ("s5-sc2-act", "§5 Scenario 2, activations", "70b-32k", "act", "- Activation Memory: ~40 GB", 40, 0,
     "8 x 32,768 x 8,192 x 80 x 2 = 343,597,383,680 bytes = 320 GiB"),
    ("s5-sc2-overhead", "§5 Scenario 2, overhead", "70b-32k", "overhead", "- Overhead: 2 GB", 2, 0, None),
    ("s5-sc2-total", "§5 Scenario 2, total", "70b-32k", "total", "**Total: ~438 GB**", 438, 0,
     "its rows sum to 438; the formula's: 130.39 + 640 + 320 + 2 = 1,092.39 GiB"),
    # §6 Example 1: Llama 3 8B, 4K, 24 GB GPU
    ("s6-ex1-weights", "§6 Example 1, weights (Q4_K_M)", "8b-4k", "weights",
     "- Use Q4_K_M quantization: 3.5 GB (model weights)", 3.5, 1, _W8Q4),
    ("s6-ex1-kv", "§6 Example 1, KV cache", "8b-4k", "kv", "- KV Cache (4K tokens): ~1 GB", 1, 0,
     "2 x 1 x 4,096 x 4,096 x 32 x 2 = 2,147,483,648 bytes = 2 GiB"),
    ("s6-ex1-act", "§6 Example 1, activations", "8b-4k", "act", "- Activation Memory: ~0.25 GB", 0.25, 2,
     "1 x 4,096 x 4,096 x 32 x 2 = 1,073,741,824 bytes = 1 GiB"),
    ("s6-ex1-overhead", "§6 Example 1, overhead", "8b-4k", "overhead", "- Overhead: 1 GB", 1, 0, None),
    ("s6-ex1-total", "§6 Example 1, total", "8b-4k", "total", "**Total: ~5.75 GB**", 5.75, 2,
     "its rows sum to 5.75; the formula's: 3.73 + 2 + 1 + 1 = 7.73 GiB"),
    # §6 Example 2: Llama 2 70B, 8K, batch 4, on an 80 GB A100: FP16, then three plans
    ("s6-ex2-fp16-weights", "§6 Example 2, weights (FP16)", "70b-8k-fp16", "weights",
     "- Use FP16: 140 GB (model weights)", 140, 0, _W70),
    *_example2_rows(),
    # §6 Example 3: Llama 3 8B, 1M tokens (§5's table again), then with an INT8 KV cache
    ("s6-ex3-weights", "§6 Example 3, Llama 3 8B 1M, weights", "8b-1m", "weights", "- Model Weights (Q4_K_M): 3.5 GB",
     3.5, 1, _W8Q4),
    ("s6-ex3-kv", "§6 Example 3, Llama 3 8B 1M, KV cache", "8b-1m", "kv", "- KV Cache (FP16): 128 GB", 128, 0, _KV8),
    ("s6-ex3-act", "§6 Example 3, Llama 3 8B 1M, activations", "8b-1m", "act", "- Activation Memory: 64 GB", 64, 0,
     _ACT8),
    ("s6-ex3-overhead", "§6 Example 3, Llama 3 8B 1M, overhead", "8b-1m", "overhead", "- Overhead: 2 GB", 2, 0, None),
    ("s6-ex3-total", "§6 Example 3, Llama 3 8B 1M, total", "8b-1m", "total", "**Total: 197.5 GB**", 197.5, 1, _T8),
    ("s6-ex3-kv-int8", "§6 Example 3, INT8 KV cache", "8b-1m-int8kv", "kv", "- KV Cache (INT8): 64 GB", 64, 0,
     "2 x 1,000,000 x 4,096 x 32 x 1 = 262,144,000,000 bytes = 244.14 GiB"),
    ("s6-ex3-total-int8", "§6 Example 3, new total with INT8 KV", "8b-1m-int8kv", "total", "**New Total: 133.5 GB**",
     133.5, 1, "3.73 + 244.14 + 244.14 + 2 = 494.01 GiB by the formula"),
]


def _scenario004(name: str):
    _, args, kwargs = _SCENARIOS004[name]
    return _b004(*args, **kwargs)


def _seed004_totals() -> list[SeedExample]:
    rows = []
    for key, label, scenario, part, quote, printed, digits, why in _TOTALS004:
        quantity, field = _COMPONENTS004[part]
        rows.append(_row004(key, label, _SCENARIOS004[scenario][0], quantity, quote, printed, digits,
                            lambda scenario=scenario, field=field: getattr(_scenario004(scenario), field), why))
    rows.append(_row004(  # the one row that relates two scenarios
        "s6-ex3-reduction", "§6 Example 3, reduction from INT8 KV", _SCENARIOS004["8b-1m-int8kv"][0],
        "reduction of the total", "(33% reduction)", 33, 0,
        lambda: 100 * (1 - _scenario004("8b-1m-int8kv").total_bytes / _scenario004("8b-1m").total_bytes),
        "note: the formula gives 33.07%; the sheet's own totals give 32.4%", "%"))
    return rows


EXAMPLES: tuple[SeedExample, ...] = (*_seed000(), *_seed001(), *_seed002(), *_seed003(), *_seed004_weights(),
                                     *_seed004_kv_act(), *_seed004_totals())
