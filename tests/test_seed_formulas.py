"""Golden tests of the five seed formulas: every worked example, the variant switches, the 003 text.

Expected values are literals worked out by hand from the seeds' formulas, never from memcal's code.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from estimator.audit import audit_markdown
from estimator.formulas import bit_width, gguf_cheat_sheet, gqa_flash_notebook, interactive_calculator, per_token
from estimator.formulas.base import Options
from estimator.seed_examples import EXAMPLES, SEEDS
from estimator.spec import spec_from_dict
from estimator.units import GiB
from estimator.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = Path("/work/shared/seeds")
GIB_70_X2 = 130.385160446167     # 70e9 x 2 bytes / 2^30
GIB_8_X05 = 3.725290298461914    # 8e9 x 0.5 bytes / 2^30
GIB_35 = 32.59629011154175       # 70e9 x 0.5 bytes / 2^30

# Every example whose printed value disagrees with its formula: key -> the formula's value, in the row's unit.
EXPECTED_SLIPS = {
    "000-kv-per-position": 4096, "000-kv-total": 12_582_912, "000-kv-total-mb": 12.0, "000-list-cache": 12.0,
    "000-total": 0.7694244384765625, "000-conclusion": 0.7694244384765625,   # 826,163,200 bytes in GiB
    "001-a-512": 134.217728, "001-a-layer-2048": 16.777216, "001-a-2048": 0.536870912,
    "001-mac-total-gb": 19.402653184,
    "004-s1-70b-fp32": 260.770320892334, "004-s1-70b-fp16": GIB_70_X2, "004-s1-70b-int8": 65.1925802230835,
    "004-s1-70b-int4": GIB_35, "004-s1-8b-fp32": 29.802322387695312, "004-s1-8b-fp16": 14.901161193847656,
    "004-s1-8b-int8": 7.450580596923828,
    "004-s2-reduction-q2_k": 87.5, "004-s2-reduction-q3_k_s": 81.25, "004-s2-reduction-q3_k_m": 81.25,
    "004-s2-reduction-q3_k_l": 81.25,
    "004-s2-8b-fp16": 14.901161193847656, "004-s2-8b-q8_0": 7.897615432739258, "004-s2-8b-q8_0-vs-fp16": 47.0,
    "004-s2-8b-q5_k_m": 4.656612873077393, "004-s2-8b-q5_k_m-vs-fp16": 68.75, "004-s2-8b-q4_k_m": GIB_8_X05,
    "004-s2-8b-q4_k_m-vs-fp16": 75.0, "004-s2-8b-q3_k_m": 2.7939677238464355, "004-s2-8b-q3_k_m-vs-fp16": 81.25,
    "004-s2-8b-q2_k": 1.862645149230957,
    "004-s3-kv-70b-numerator": 85_899_345_920, "004-s3-kv-70b": 80.0,
    "004-s3-kv-8b-numerator": 524_288_000_000, "004-s3-kv-8b": 488.28125, "004-s4-act-8b": 244.140625,
    "004-s5-weights": GIB_8_X05, "004-s5-kv": 488.28125, "004-s5-act": 244.140625, "004-s5-total": 738.1471652984619,
    "004-s5-sc1-weights": GIB_70_X2, "004-s5-sc1-kv": 5.0, "004-s5-sc1-total": 139.885160446167,
    "004-s5-sc2-weights": GIB_70_X2, "004-s5-sc2-kv": 640.0, "004-s5-sc2-act": 320.0,
    "004-s5-sc2-total": 1092.385160446167,
    "004-s6-ex1-weights": GIB_8_X05, "004-s6-ex1-kv": 2.0, "004-s6-ex1-act": 1.0, "004-s6-ex1-total": 7.725290298461914,
    "004-s6-ex2-fp16-weights": GIB_70_X2,
    "004-s6-ex2-int8-weights": 65.1925802230835, "004-s6-ex2-int8-kv": 80.0, "004-s6-ex2-int8-act": 40.0,
    "004-s6-ex2-int8-total": 187.1925802230835,
    "004-s6-ex2-better-weights": GIB_35, "004-s6-ex2-better-kv": 80.0, "004-s6-ex2-better-act": 40.0,
    "004-s6-ex2-better-total": 154.59629011154175,
    "004-s6-ex2-optimal-weights": GIB_35, "004-s6-ex2-optimal-kv": 40.0, "004-s6-ex2-optimal-act": 40.0,
    "004-s6-ex2-optimal-total": 114.59629011154175,
    "004-s6-ex3-weights": GIB_8_X05, "004-s6-ex3-kv": 488.28125, "004-s6-ex3-act": 244.140625,
    "004-s6-ex3-total": 738.1471652984619, "004-s6-ex3-kv-int8": 244.140625, "004-s6-ex3-total-int8": 494.0065402984619,
}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.key)
def test_worked_example(example):
    if example.key in EXPECTED_SLIPS:
        assert example.slip, "a disagreement must be flagged in the table"
        assert not example.agrees()
        assert example.formula_value() == pytest.approx(EXPECTED_SLIPS[example.key], rel=1e-12)
    else:
        assert example.slip is None
        assert example.agrees(), f"{example.formula_value()} does not round to the printed {example.printed}"


def test_flagged_slips_are_exactly_the_expected_ones():
    assert {e.key for e in EXAMPLES if e.slip} == set(EXPECTED_SLIPS)
    assert len({e.key for e in EXAMPLES}) == len(EXAMPLES)


def test_table_covers_every_seed():
    counts = {short: sum(e.seed == name for e in EXAMPLES) for short, name in SEEDS.items()}
    assert counts == {"000": 17, "001": 14, "002": 6, "003": 6, "004": 84}


@pytest.mark.skipif(not SEED_DIR.is_dir(), reason="seed documents not present")
def test_quotes_are_verbatim_from_the_seeds():
    for example in EXAMPLES:
        assert example.quote in (SEED_DIR / example.seed).read_text(), example.key


def test_formula_modules_cite_their_seed():
    modules = (per_token, bit_width, gqa_flash_notebook, interactive_calculator, gguf_cheat_sheet)
    assert [m.id for m in modules] == ["per-token", "bit-width", "gqa-flash-notebook", "interactive-calculator",
                                       "gguf-cheat-sheet"]
    for module in modules:
        assert module.source in SEEDS.values() and module.source in module.__doc__ and module.title


# --- specs written out here, independent of the table ----------------------------------------------
GPT = spec_from_dict({"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 50257})
GPT_SMALL = spec_from_dict({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257})
LLAMA_70B = spec_from_dict({"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80,
                            "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
                            "vocab_size": 128256})
PHI4 = spec_from_dict({"model_type": "phi3", "_name_or_path": "microsoft/phi-4", "hidden_size": 5120,
                       "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 10,
                       "intermediate_size": 17920, "vocab_size": 100352, "max_position_embeddings": 16384})


def test_per_token_components_and_binary_overhead():
    b = per_token.estimate(GPT, Workload(prompt_len=128, dtype="fp16"), Options(parameters=354_336_768))
    assert (b.weights_bytes, b.activation_bytes, b.kv_cache_bytes) == (708_673_536, 49_152, 12_582_912)
    assert b.overhead_bytes == 104_857_600 and b.total_bytes == 826_163_200
    # per token: the activations do not grow with the sequence; the cache does
    long = per_token.estimate(GPT, Workload(prompt_len=256, dtype="fp16"), Options(parameters=354_336_768))
    assert long.activation_bytes == 49_152 and long.kv_cache_bytes == 25_165_824


def test_per_token_ignores_gqa():
    b = per_token.estimate(LLAMA_70B, Workload(prompt_len=1, dtype="fp16"), Options(parameters=1))
    assert b.kv_cache_bytes == 80 * 2 * 8192 * 2  # d_model, not 8 KV heads x 128
    assert any("ignores" in n for n in b.notes)


@pytest.mark.parametrize("os_name, overhead", [("linux", 2_000_000_000), ("windows", 2_000_000_000),
                                               ("macos", 5_000_000_000)])
def test_bit_width_os_switch(os_name, overhead):
    spec = spec_from_dict({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                           "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32000})
    b = bit_width.estimate(spec, Workload(prompt_len=512, dtype="fp16"), Options(parameters=7_000_000_000, os=os_name))
    assert b.overhead_bytes == overhead
    assert b.total_bytes == 14_402_653_184 + overhead


def test_bit_width_uses_one_t_for_everything():
    spec = spec_from_dict({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                           "num_attention_heads": 32, "intermediate_size": 11008, "vocab_size": 32000})
    b = bit_width.estimate(spec, Workload(prompt_len=512, weights="nf4"), Options(parameters=7_000_000_000))
    assert (b.weights_bytes, b.activation_bytes, b.kv_cache_bytes) == (3_500_000_000, 33_554_432, 67_108_864)


FLASH_70B = dict(model=141_200_000_000, vanilla=618_475_290_624, gqa=129_385_889_792, flash=68_853_694_464,
                 kv=42_949_672_960)


@pytest.mark.parametrize("attention, variant, activations", [("flash", "flash", FLASH_70B["flash"]),
                                                             ("sdpa", "flash", FLASH_70B["flash"]),
                                                             ("eager", "gqa", FLASH_70B["gqa"])])
def test_notebook_variant_follows_attention(attention, variant, activations):
    wl = Workload(batch=16, prompt_len=8192, attention=attention)
    fig = gqa_flash_notebook.figures(LLAMA_70B, wl, Options(parameters=70_600_000_000))
    assert fig.variant == variant
    assert (fig.model_bytes, fig.vanilla_bytes, fig.gqa_bytes, fig.flash_bytes, fig.kv_cache_bytes) == \
        tuple(FLASH_70B.values())
    b = gqa_flash_notebook.estimate(LLAMA_70B, wl, Options(parameters=70_600_000_000))
    assert (b.activation_bytes, b.kv_cache_bytes, b.overhead_bytes) == (activations, FLASH_70B["kv"], 0)


def test_notebook_without_num_key_value_heads_is_vanilla_with_plain_kv():
    wl = Workload(batch=1, prompt_len=1024, attention="eager", dtype="fp16")
    fig = gqa_flash_notebook.figures(GPT_SMALL, wl, Options(parameters=124_439_808))
    assert fig.variant == "vanilla" and fig.gqa_bytes is None and not fig.kv_with_gqa
    assert (fig.vanilla_bytes, fig.kv_cache_bytes, fig.model_bytes) == (150_994_944, 37_748_736, 248_879_616)
    flash = gqa_flash_notebook.figures(GPT_SMALL, wl.with_(attention="sdpa"), Options(parameters=124_439_808))
    assert flash.variant == "flash"


def test_notebook_kv_switch_and_printed_rounding():
    wl = Workload(batch=16, prompt_len=8192, attention="flash")
    fig = gqa_flash_notebook.figures(LLAMA_70B, wl, Options(parameters=70_600_000_000))
    assert gqa_flash_notebook.printed_gb(fig) == {"model": 141.2, "vanilla": 618.48, "gqa": 129.39, "flash": 68.85,
                                                  "kv": 42.95, "total": 253.0}
    off = gqa_flash_notebook.estimate(LLAMA_70B, wl, Options(parameters=70_600_000_000, kv_cache=False))
    assert off.kv_cache_bytes == 0 and off.total_bytes == 141_200_000_000 + 68_853_694_464


# --- 003: the transcript, kept literally and read from the seed --------------------------------------
PARAMETER_LINES = [
    "--- Model Parameters ---",
    "Model Name: microsoft/phi-4",
    "Number of Hidden Layers (L): 40",
    "Hidden Size (h): 5120",
    "Number of Attention Heads (a): 40",
    "Number of Key-Value Heads (g): 10",
    "The model uses Grouped Query Attention (GQA).",
]
RESULT_LINES = [
    "--- Memory Consumption Results ---",
    "Memory consumption of the model: 29.4 GB",
    "Memory consumption of vanilla inference: 91.27 GB",
    "Memory consumption of inference with GQA: 26.26 GB",
    "Memory consumption of inference with FlashAttention: 5.39 GB",
    "Memory consumption of the KV cache (with GQA): 1.34 GB",
    "",
    "Total Memory consumption (given the selected configuration): 36.13 GB",
]
QUESTION_LINES = [
    "Number of parameters in the model (n) (in billions) (**Please enter this manually**): ",
    "Bitwidth of the model's parameters (p) (in bits) [Default 16]: ",
    "Sequence length (s) (**Please enter this manually**): ",
    "Batch size (b) (**Please enter this manually**) [Default 1]: ",
    "Use FlashAttention? [Y/n] (Default Y): ",
    "Use KV Cache? [Y/n] (Default Y): ",
]
PHI4_WORKLOAD = Workload(batch=1, prompt_len=16384, dtype="bf16", attention="flash")
PHI4_OPTIONS = Options(parameters=14_700_000_000, kv_cache=True)


def _transcript_block(first: str, last: str) -> list[str]:
    path = SEED_DIR / "003_10c36e1468230229.txt"
    if not path.is_file():
        pytest.skip("seed 003 not present")
    lines = path.read_text().splitlines()
    start = lines.index(first)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(last))
    return lines[start:end + 1]


def test_calculator_parameters_text():
    assert interactive_calculator.parameters_text(PHI4).split("\n") == PARAMETER_LINES


def test_calculator_results_text():
    text = interactive_calculator.results_text(PHI4, PHI4_WORKLOAD, PHI4_OPTIONS)
    assert text.split("\n") == RESULT_LINES


def test_calculator_text_equals_the_transcript():
    assert _transcript_block("--- Model Parameters ---", "The model uses") == PARAMETER_LINES
    assert _transcript_block("--- Memory Consumption Results ---", "Total Memory") == RESULT_LINES
    asked = _transcript_block("--- Adjustable Parameters ---", "Use KV Cache?")[1:]  # prompt + typed answer
    assert len(asked) == len(QUESTION_LINES)
    assert all(line.startswith(prompt) for line, prompt in zip(asked, QUESTION_LINES))


def test_calculator_questions_and_answers():
    qs = interactive_calculator.questions()
    assert [q.prompt for q in qs] == QUESTION_LINES
    assert [q.default for q in qs] == [None, 16, None, 1, True, True]
    answers = {q.key: q.parse(a) for q, a in zip(qs, ["14.7", "", "16384", "1", "Y", "Y"])}
    assert answers == {"parameters_billion": 14.7, "bits": 16, "seqlen": 16384, "batch": 1,
                       "flash_attention": True, "kv_cache": True}
    wl, opts = interactive_calculator.apply_answers(answers, Workload(), Options())
    assert interactive_calculator.results_text(PHI4, wl, opts).split("\n") == RESULT_LINES
    b = interactive_calculator.estimate(PHI4, wl, opts)
    assert (b.formula, b.weights_bytes, b.kv_cache_bytes, b.activation_bytes) == \
        ("interactive-calculator", 29_400_000_000, 1_342_177_280, 5_385_486_336)


def test_calculator_without_gqa_prints_plain_kv():
    wl = Workload(batch=1, prompt_len=1024, attention="eager", dtype="fp16")
    text = interactive_calculator.results_text(GPT_SMALL, wl, Options(parameters=124_439_808))
    assert "with GQA" not in text
    assert "Memory consumption of the KV cache: 0.04 GB" in text.split("\n")
    assert "Key-Value" not in interactive_calculator.parameters_text(GPT_SMALL)


# --- 004 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workload, bytes_", [(Workload(dtype="fp32"), 4_000_000_000), (Workload(dtype="fp16"),
                         2_000_000_000), (Workload(weights="int8"), 1_000_000_000), (Workload(weights="nf4"),
                         500_000_000), (Workload(weights="Q4_K_M"), 500_000_000), (Workload(weights="Q8_0"),
                         1_060_000_000), (Workload(weights="Q4_0"), 560_000_000)])
def test_cheat_sheet_bytes_per_parameter(workload, bytes_):
    b = gguf_cheat_sheet.estimate(GPT, workload, Options(parameters=1_000_000_000))
    assert b.weights_bytes == bytes_


def test_cheat_sheet_overhead_and_kv_precision():
    wl = Workload(batch=1, prompt_len=4096, weights="Q4_K_M", dtype="fp16")
    spec = spec_from_dict({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                           "vocab_size": 128256})
    default = gguf_cheat_sheet.estimate(spec, wl, Options(parameters=8_000_000_000))
    one = gguf_cheat_sheet.estimate_with(spec, wl, Options(parameters=8_000_000_000), overhead_gib=1)
    assert (default.overhead_bytes, one.overhead_bytes) == (2 * GiB, GiB)
    assert (one.kv_cache_bytes, one.activation_bytes) == (2_147_483_648, 1_073_741_824)
    int8 = gguf_cheat_sheet.estimate(spec, wl.with_(kv_dtype="int8"), Options(parameters=8_000_000_000))
    assert int8.kv_cache_bytes == 1_073_741_824 and int8.activation_bytes == 1_073_741_824


# --- the audit document --------------------------------------------------------------------------------
def test_committed_audit_is_current():
    doc = ROOT / "docs" / "seed-audit.md"
    assert doc.read_text() == audit_markdown(), "regenerate: python -m estimator.audit > docs/seed-audit.md"


def test_audit_flags_every_slip():
    text = audit_markdown()
    for key in EXPECTED_SLIPS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {key} |"))
        assert "| **no** |" in row
