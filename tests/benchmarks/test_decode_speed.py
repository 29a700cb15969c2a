"""Long generations in the dry run (issue 14): Llama-3.1-8B, bf16, batch 1, prompt 1024, `measure()` in a
warm process, with the decode steps extrapolated (harness/measure/_decode.py) and, once, traced in full.

Targets (issue 14): 2,048 new tokens <= 5 s warm; 512 new tokens >= 30x faster than the full trace
(which takes minutes here: it runs once, one round, and its record must equal the extrapolated one
to the byte). Run with `make bench` or `pytest tests/benchmarks/test_decode_speed.py --benchmark-only
--benchmark-enable`.
"""
from __future__ import annotations

from side_by_side import check_target, side_by_side

MODEL = "meta-llama/Llama-3.1-8B"
SHAPE = dict(batch=1, prompt_len=1024, dtype="bf16", phase="generate")


def _measure(new_tokens: int, extrapolate: bool = True):
    from estimator.workload import Workload
    from harness.measure import measure

    def run():
        record = measure(MODEL, Workload(new_tokens=new_tokens, **SHAPE), device="dry-run", extrapolate=extrapolate)
        assert record.ok, record.message
        return record
    return run


def test_dryrun_8b_generate_2048_tokens(benchmark):
    records = []

    def subject():
        records.append(_measure(2048)())
    cmp = side_by_side(benchmark, subject, rounds=3)
    notes = " ".join(records[-1].notes)
    assert "closed form" in notes, notes
    benchmark.extra_info["notes"] = list(records[-1].notes)
    benchmark.extra_info["peak_tensor_bytes"] = records[-1].peak_tensor_bytes
    check_target(benchmark, "8B dry-run generate, prompt 1024, 2048 new tokens, measure() warm", cmp.median(),
                 at_most=5.0, unit=" s")


def test_dryrun_8b_generate_512_tokens_vs_full_trace(benchmark):
    records: dict[str, list] = {"full": [], "extrapolated": []}

    def full():
        records["full"].append(_measure(512, extrapolate=False)())

    def subject():
        records["extrapolated"].append(_measure(512)())
    subject()  # warm: imports, the fake mode's op cache (the full trace runs once, so it is not warmed)
    cmp = side_by_side(benchmark, subject, {"full_trace": full}, rounds=1, warmup=False)
    a, b = records["full"][-1], records["extrapolated"][-1]
    for name in ("peak_tensor_bytes", "kv_cache_bytes", "baseline_bytes", "peak_op"):
        assert getattr(a, name) == getattr(b, name), name
    benchmark.extra_info["peak_tensor_bytes"] = b.peak_tensor_bytes
    benchmark.extra_info["kv_cache_bytes"] = b.kv_cache_bytes
    check_target(benchmark, "8B dry-run generate of 512 tokens: full trace / extrapolated (wall)",
                 cmp.ratio("full_trace"), at_least=30.0, unit="x")
