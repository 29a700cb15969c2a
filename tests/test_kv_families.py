"""Weights and KV cache of every family, exact to the byte against the dry run, on random configs.

For each family of the architecture table, random small configs (tests/family_cases.py) are built on
fake tensors and run as a prefill and as a generate (dynamic cache; a static cache too where
transformers supports it): memcal's weight bytes equal the bytes of the model's parameters and
buffers, and its per-layer KV records (estimator/kv.py) equal the distinct storages the cache object
holds at the end of the run.
"""
from __future__ import annotations

import pytest

from estimator import Workload
from estimator.formulas import memcal
from estimator.spec import spec_from_dict, supported_families
from tests.family_cases import random_configs
from tests.harness_helpers import quiet

pytest.importorskip("torch")
from harness.measure import build_model, run_point  # noqa: E402

quiet()
CONFIGS = 4


@pytest.mark.parametrize("family", supported_families())
def test_weights_and_kv_are_exact_on_random_configs(family):
    checked = 0
    for n, config in enumerate(random_configs(family, CONFIGS, seed="kv")):
        spec = spec_from_dict(config)
        dtype = "bf16"
        prompt = 12 + 5 * n
        if spec.learned_positions:  # a learned position table is a hard limit (the run would fail)
            prompt = max(2, min(prompt, spec.max_position_embeddings - 3 - n))
        base = Workload(batch=1 + n % 3, prompt_len=prompt, dtype=dtype, attention="eager")
        built = build_model(spec, base, "dry-run")
        assert memcal.weight_bytes(spec, base) == built.weight_bytes, config
        for w in (base, base.with_(new_tokens=3 + n, phase="generate"),
                  base.with_(new_tokens=3 + n, phase="generate", cache="static")):
            m = run_point(built, w)
            if m.status == "unsupported" and w.cache == "static":
                continue  # some hybrid caches have no static form; the record's reason is enough
            assert m.status == "ok", (config, w, m.message)
            assert memcal.kv_cache_bytes(spec, w) == m.kv_cache_bytes, (config, w.describe())
            checked += 1
    assert checked >= 2 * CONFIGS
