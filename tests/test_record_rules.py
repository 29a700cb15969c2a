"""Two record fields of the architecture table beyond shapes: a tensor entry's `copies` (a
ModuleList of identical tensors inside a layer, named with ``{j}``) and a record's `unsupported`
rules (workloads transformers itself cannot run, refused by the harness with the record's reason).
"""
from __future__ import annotations

import pytest

from estimator import Workload
from estimator.params import parameter_layout
from estimator.spec import spec_from_dict
from tests.harness_helpers import quiet

torch = pytest.importorskip("torch")
from harness.measure import build_model, run_point, unsupported_reason  # noqa: E402

quiet()
_FALCON = dict(model_type="falcon", hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
               ffn_hidden_size=48)
_STATIC = Workload(batch=1, prompt_len=8, new_tokens=3, phase="generate", cache="static", attention="eager")


def test_copies_name_one_tensor_per_index():
    """StableLM's per-head LayerNorms: norms.0 … norms.{heads-1} for q, … {kv_heads-1} for k."""
    spec = spec_from_dict(dict(model_type="stablelm", hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                               num_hidden_layers=3, intermediate_size=40, vocab_size=64, qk_layernorm=True))
    names = {name for name, _, _ in parameter_layout(spec).stored() if "layernorm.norms" in name}
    assert names == {f"self_attn.q_layernorm.norms.{j}.weight" for j in range(4)} | \
        {f"self_attn.k_layernorm.norms.{j}.weight" for j in range(2)}
    head_dim, layers = 8, 3
    plain = spec_from_dict({**dict(spec.config), "qk_layernorm": False})
    assert parameter_layout(spec).norm_params - parameter_layout(plain).norm_params == (4 + 2) * head_dim * layers


def test_a_record_rule_refuses_what_transformers_cannot_run():
    alibi, rotary = spec_from_dict({**_FALCON, "alibi": True}), spec_from_dict(_FALCON)
    assert "static cache" in unsupported_reason(alibi, _STATIC, "dry-run")
    assert unsupported_reason(alibi, _STATIC.with_(cache="dynamic"), "dry-run") is None
    assert unsupported_reason(rotary, _STATIC, "dry-run") is None
    built = build_model(alibi, _STATIC.with_(cache="dynamic"), "dry-run")
    record = run_point(built, _STATIC)
    assert (record.status, record.message) == ("unsupported", unsupported_reason(alibi, _STATIC, "dry-run"))


def test_the_refused_workload_fails_in_transformers():
    """The fact behind Falcon's rule, on a real CPU model: drop the rule when this stops failing."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model(**{**_FALCON, "alibi": True})
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises((RuntimeError, ValueError)):
        model.generate(torch.zeros((1, 8), dtype=torch.long) + 5, max_new_tokens=3, min_new_tokens=3,
                       do_sample=False, cache_implementation="static")
