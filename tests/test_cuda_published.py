"""memcal's CUDA totals against published GPU measurements (issue 16), read from the facts in
tests/data/cuda_published.toml (each with its source URL and stated setup). Each bound is the error
memcal had when the row was added, rounded up a little: a regression guard, not a claim of accuracy.
docs/cuda.md ("Published measurements") says why the far-off rows are far off. The octocoder rows of
the same file are checked in tests/test_cuda_target.py."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from estimator import Workload
from estimator.cuda.target import cuda_totals
from estimator.spec import load_spec

FACTS = Path(__file__).parent / "data" / "cuda_published.toml"
SOURCES = {s["id"]: s for s in tomllib.loads(FACTS.read_text())["source"]}


def test_every_source_states_where_and_what():
    for source in SOURCES.values():
        assert source["url"].startswith("https://") and source["setup"] and source["rows"]
        assert source["quantity"] in ("allocated", "allocated+context") and source["unit"] in ("GiB", "MB")


# --- optimum's GPTQ benchmark README: Llama-2-13B fp16 on an A100-SXM4-80GB --------------------------
GPTQ = SOURCES["optimum-gptq-readme"]
UNIT = {"MB": 1e6, "GiB": 2**30}[GPTQ["unit"]]

# (phase, batch) -> bound on |error|; memcal's error when added in the comment. transformers 4.3x kept the
# KV cache as tuples (each decode step concatenates a whole new cache while the old one is still held:
# two caches at the last step) and upcast the prompt's full logits to fp32, which memcal (transformers
# 5.23: DynamicCache, logits of the last token only) does not model; and ~0.9 GB of constant external
# memory is more than memcal's 512 MiB context estimate. So generate rows are far off, growing with the
# batch; the prefill rows are within 3.2 %.
GPTQ_BOUNDS = {
    ("generate", 1): 0.065,   # -5.92 %
    ("generate", 2): 0.09,    # -8.29 %
    ("generate", 4): 0.13,    # -12.33 %
    ("generate", 8): 0.18,    # -17.26 %
    ("generate", 16): 0.265,  # -25.61 %
    ("prefill", 1): 0.035,    # -3.13 %
    ("prefill", 2): 0.035,    # -3.00 %
    ("prefill", 4): 0.03,     # -2.75 %
    ("prefill", 8): 0.025,    # -2.30 %
    ("prefill", 16): 0.02,    # -1.56 %
}


def _gptq_totals(row):
    spec = load_spec(GPTQ["model"])
    w = Workload(batch=row["batch"], prompt_len=GPTQ["prompt"], new_tokens=row["new_tokens"],
                 dtype=GPTQ["dtype"], attention=GPTQ["attention"])
    return cuda_totals(spec, w, GPTQ["gpu"], since="load")  # peaks reset after loading


@pytest.mark.parametrize("row", GPTQ["rows"], ids=lambda r: f"{r['phase']}-b{r['batch']}")
def test_published_optimum_gptq_readme_llama2_13b(row):
    t = _gptq_totals(row)
    # benchmark_gptq.py: peak allocated + (peak nvidia-smi - peak reserved) = allocated + the context
    predicted = t.allocated_bytes + (t.device_bytes - t.reserved_bytes)
    published = row["value"] * UNIT
    error = (predicted - published) / published
    bound = GPTQ_BOUNDS[(row["phase"], row["batch"])]
    assert error < 0, "memcal is below every row of this source (see docs/cuda.md)"
    assert abs(error) <= bound, f"{predicted / UNIT:.2f} MB vs published {row['value']} ({error:+.2%})"


def test_published_optimum_gptq_readme_generate_is_the_tuple_cache():
    """The documented reason, checked on the published numbers themselves: generating minus prefilling
    the same batch cancels the context and every constant, leaving (transformers 4.3x) two KV caches at
    the last step (the held one of P+N-2 tokens and the new one of P+N-1) minus the prefill's peak
    beyond its KV cache of P tokens, the prompt's fp16 logits and their fp32 copy (6 B per logit)."""
    rows = {(r["phase"], r["batch"]): r["value"] for r in GPTQ["rows"]}
    spec = load_spec(GPTQ["model"])
    p, n, vocab = GPTQ["prompt"], 512, spec.vocab_size
    prefill = _gptq_totals({"batch": 1, "new_tokens": 1})
    kv_per_token = prefill.terms["kv_cache_bytes"] // p  # memcal's KV bytes per token: 819,200 B
    assert kv_per_token == 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 2
    per_sequence = kv_per_token * (p + 2 * n - 3) - 6 * p * vocab
    for batch in (1, 2, 4):  # -0.35 % each; batch 8 and 16 publish 6.5 % and 2.2 % less
        published = (rows[("generate", batch)] - rows[("prefill", batch)]) * UNIT
        assert published == pytest.approx(batch * per_sequence, rel=0.01)


# --- optimum-benchmark's running-llamas example: Llama-2-7B/13B fp16 on an A100-SXM4-80GB -----------------
LLAMAS = SOURCES["optimum-benchmark-running-llamas"]
MODEL = {"7b": "meta-llama/Llama-2-7b-hf", "13b": "meta-llama/Llama-2-13b-hf"}

# (model, phase, batch) -> bound on |error|; memcal's error when added in the comment. The same two
# transformers 4.35 behaviours as above (tuple cache in generate; the forward's logits upcast to fp32,
# b*s*vocab*4 B), plus its per-layer rotary cos/sin caches (layers * 2 * 4096 * 128 * 2 B: 67 MB on 7B,
# 84 MB on 13B), which memcal (transformers 5.23: one model-level rotary module) does not have.
LLAMAS_BOUNDS = {
    ("7b", "forward", 1): 0.01,       # -0.65 %
    ("7b", "forward", 2): 0.01,       # -0.80 %
    ("7b", "forward", 4): 0.015,      # -1.08 %
    ("7b", "forward", 8): 0.02,       # -1.60 %
    ("7b", "forward", 16): 0.03,      # -2.50 %
    ("7b", "forward", 32): 0.045,     # -3.89 %
    ("7b", "forward", 64): 0.06,      # -5.71 %
    ("7b", "generate", 1): 0.035,     # -3.22 %
    ("7b", "generate", 2): 0.06,      # -5.67 %
    ("7b", "generate", 4): 0.105,     # -9.86 %
    ("7b", "generate", 8): 0.165,     # -16.21 %
    ("7b", "generate", 16): 0.245,    # -24.27 %
    ("7b", "generate", 32): 0.33,     # -32.46 %
    ("7b", "generate", 64): 0.395,    # -39.11 %
    ("13b", "forward", 1): 0.015,     # -0.85 %
    ("13b", "forward", 2): 0.015,     # -0.89 %
    ("13b", "forward", 4): 0.015,     # -0.99 %
    ("13b", "forward", 8): 0.015,     # -1.15 %
    ("13b", "forward", 16): 0.02,     # -1.46 %
    ("13b", "forward", 32): 0.025,    # -1.96 %
    ("13b", "generate", 1): 0.035,    # -3.01 %
    ("13b", "generate", 2): 0.055,    # -5.04 %
    ("13b", "generate", 4): 0.09,     # -8.62 %
    ("13b", "generate", 8): 0.145,    # -14.28 %
    ("13b", "generate", 16): 0.225,   # -21.91 %
    ("13b", "generate", 32): 0.305,   # -30.24 %
}


def _size(model: str) -> str:
    return next(k for k, v in MODEL.items() if v == model)


def _llamas_totals(row):
    new_tokens = LLAMAS["new_tokens"] if row["phase"] == "generate" else 0  # forward: model(**inputs)
    w = Workload(batch=row["batch"], prompt_len=LLAMAS["prompt"], new_tokens=new_tokens, dtype=LLAMAS["dtype"],
                 attention=LLAMAS["attention"])
    return cuda_totals(load_spec(row["model"]), w, LLAMAS["gpu"], since="load")


@pytest.mark.parametrize("row", LLAMAS["rows"], ids=lambda r: f"{_size(r['model'])}-{r['phase']}-b{r['batch']}")
def test_published_optimum_benchmark_running_llamas(row):
    t = _llamas_totals(row)
    published = row["value"] * 1e6  # int(bytes * 1e-6): at most 1 MB below the bytes
    error = (t.allocated_bytes - published) / published
    assert error < 0, "memcal is below every row of this source (see docs/cuda.md)"
    bound = LLAMAS_BOUNDS[(_size(row["model"]), row["phase"], row["batch"])]
    assert abs(error) <= bound, f"{t.allocated_bytes / 1e6:.0f} MB vs published {row['value']} ({error:+.2%})"


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_published_optimum_benchmark_generate_is_the_tuple_cache(size):
    """As for the GPTQ README: generate minus forward of the same batch, both published, is two KV caches
    at the last step (P+N-2 and P+N-1 tokens) minus the forward's KV cache (P) and logits (fp16 + fp32)."""
    spec = load_spec(MODEL[size])
    rows = {(r["phase"], r["batch"]): r["value"] for r in LLAMAS["rows"] if r["model"] == MODEL[size]}
    p, n = LLAMAS["prompt"], LLAMAS["new_tokens"]
    kv_per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 2
    forward = _llamas_totals({"model": MODEL[size], "phase": "forward", "batch": 1})
    assert forward.terms["kv_cache_bytes"] == kv_per_token * p
    per_sequence = kv_per_token * (p + 2 * n - 3) - 6 * p * spec.vocab_size
    for batch in sorted({b for _, b in rows}):  # 7B: -0.38 % .. -0.03 %; 13B: -0.30 % .. +0.02 %
        published = (rows[("generate", batch)] - rows[("forward", batch)]) * 1e6
        assert published == pytest.approx(batch * per_sequence, rel=0.005), batch


@pytest.mark.parametrize("size,rel", [("7b", 0.0005), ("13b", 0.006)])
def test_published_optimum_benchmark_forward_is_transformers_4_35(size, rel):
    """The forward rows, rebuilt from memcal's weights, workspace and KV cache plus what transformers 4.35
    adds: per-layer rotary cos/sin caches (fp16, max_position_embeddings rows) and the logits upcast to fp32
    beside their fp16 original, with the final hidden state: the peak is at the logits. 7B matches every
    batch within 0.03 %; 13B's rows are 0.5 % (126 MB, at every batch) above, which this does not explain."""
    spec = load_spec(MODEL[size])
    p = LLAMAS["prompt"]
    rotary = spec.num_layers * 2 * 4096 * spec.head_dim * 2  # Llama-2: max_position_embeddings 4096
    for row in (r for r in LLAMAS["rows"] if r["model"] == MODEL[size] and r["phase"] == "forward"):
        t = _llamas_totals(row)
        legacy = (t.terms["weights_bytes"] + t.terms["cublas_workspace_bytes"] + rotary + t.terms["kv_cache_bytes"]
                  + row["batch"] * p * (6 * spec.vocab_size + 2 * spec.hidden_size))
        assert legacy == pytest.approx(row["value"] * 1e6, rel=rel), row["batch"]
