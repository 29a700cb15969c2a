"""generate always runs with a KV cache, as the prefill does, even when a config.json keeps the
training-time ``use_cache: false`` (e.g. HuggingFaceTB/SmolLM3-3B's)."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
from harness_helpers import quiet, tiny  # noqa: E402

from estimator import Workload  # noqa: E402
from estimator.formulas import memcal  # noqa: E402
from estimator.spec import load_spec  # noqa: E402
from harness.measure import measure  # noqa: E402

quiet()


@pytest.mark.parametrize("device", ["cpu", "dry-run"])
def test_generate_keeps_a_cache_whatever_use_cache_says(device):
    spec = load_spec(tiny("llama", use_cache=False))
    w = Workload(batch=2, prompt_len=8, new_tokens=3, dtype="fp32", attention="eager", phase="generate")
    m = measure(spec, w, device=device)
    assert m.ok, m.message
    assert m.kv_cache_bytes == memcal.kv_cache_bytes(spec, w) > 0
