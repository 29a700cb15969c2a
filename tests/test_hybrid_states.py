"""Hybrids whose linear-attention or Mamba-2 layers keep a fixed state per sequence (qwen3_next,
nemotron_h): the harness counts those states (transformers' LinearAttentionLayer keeps them in dicts,
one per state index), and the dry run of a tiny model, MoE layers included, allocates and frees
exactly what a real CPU run does, to the byte, with the cache memcal's records predict."""
from __future__ import annotations

import pytest

from estimator import Workload
from estimator.formulas import memcal
from estimator.spec import load_spec
from tests.harness_helpers import quiet

torch = pytest.importorskip("torch")
from harness.measure import build_model, cache_bytes, run_point  # noqa: E402

quiet()
# Sizes that keep torch's CPU grouped_mm kernel happy (bf16 rows of 16-byte multiples), so the real
# run takes the same experts path as the dry run.
TINY = {
    "qwen3_next": dict(model_type="qwen3_next", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=4, intermediate_size=96, vocab_size=256, head_dim=16, num_experts=4,
                       num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                       linear_num_value_heads=4, decoder_sparse_step=2, _name_or_path="tiny-qwen3-next"),
    "nemotron_h": dict(model_type="nemotron_h", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                       hybrid_override_pattern="M-M*EM", intermediate_size=96, vocab_size=256, head_dim=16,
                       n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       moe_shared_expert_intermediate_size=48, mamba_num_heads=4, mamba_head_dim=16, n_groups=2,
                       ssm_state_size=8, chunk_size=4, _name_or_path="tiny-nemotron-h"),
}


def test_cache_bytes_counts_the_states_a_linear_attention_layer_keeps():
    from transformers import CONFIG_MAPPING, DynamicCache
    config = CONFIG_MAPPING["qwen3_next"].from_dict(dict(TINY["qwen3_next"]))
    cache = DynamicCache(config=config)
    conv = torch.zeros(2, 96, 5, dtype=torch.bfloat16)       # batch, conv channels, prompt positions
    recurrent = torch.zeros(2, 4, 16, 16, dtype=torch.float32)
    cache.update_conv_state(conv, layer_idx=0, conv_kernel_size=4)
    cache.update_recurrent_state(recurrent, layer_idx=0)
    assert cache_bytes(cache) == 2 * 96 * 4 * 2 + recurrent.numel() * 4  # the conv state keeps the kernel's width


@pytest.mark.parametrize("family", sorted(TINY))
def test_hybrid_dry_run_equals_real_cpu(family):
    spec = load_spec(TINY[family])
    assert "linear_attention" in spec.layer_types and "moe" in spec.layer_mlp
    first = Workload(batch=1, prompt_len=4, dtype="bf16", attention="eager")
    real, fake = build_model(spec, first, "cpu"), build_model(spec, first, "dry-run")
    assert real.weight_bytes == fake.weight_bytes == memcal.weight_bytes(spec, first)
    for wl in (Workload(batch=2, prompt_len=8, dtype="bf16", attention="eager"),
               Workload(batch=2, prompt_len=8, new_tokens=3, dtype="bf16", attention="eager"),
               Workload(batch=2, prompt_len=8, new_tokens=3, dtype="bf16", attention="eager", cache="static")):
        traces = [], []
        r = run_point(real, wl, keep_trace=True, tracker_out=traces[0])
        f = run_point(fake, wl, keep_trace=True, tracker_out=traces[1])
        assert r.ok and f.ok, (r.message, f.message)
        assert r.peak_tensor_bytes == f.peak_tensor_bytes, wl.describe()
        assert r.kv_cache_bytes == f.kv_cache_bytes == memcal.kv_cache_bytes(spec, wl), wl.describe()
        real_trace, fake_trace = ([(e.op, e.delta_bytes) for e in t[0].trace] for t in traces)
        assert real_trace == fake_trace
