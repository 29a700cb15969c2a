"""Engine facts the MoE records need: an inherited alias a child's config class lacks can be dropped
(`attribute_map = { alias = "" }`), and parameters kept in fp32 whatever the model's dtype
(transformers' `_keep_in_fp32_modules`, ERNIE 4.5's router) are priced at 4 bytes."""
from __future__ import annotations

import pytest

from estimator import Workload, families
from estimator.formulas import memcal
from estimator.params import parameter_layout
from estimator.spec import spec_from_dict

ERNIE = dict(model_type="ernie4_5_moe", hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
             num_hidden_layers=3, intermediate_size=8, vocab_size=20, moe_num_experts=3, moe_k=2,
             moe_intermediate_size=4, use_bias=True)


def test_a_child_drops_an_inherited_alias(tmp_path):
    (tmp_path / "memcal_t_moe.toml").write_text(
        'model_type = "memcal_t_moe"\ninherit = "mixtral"\nattribute_map = { num_experts = "" }\n')
    families.add_path(tmp_path)
    try:
        assert dict(families.get("mixtral").attribute_map) == {"num_experts": "num_local_experts"}
        assert dict(families.get("memcal_t_moe").attribute_map) == {}
        config = dict(model_type="memcal_t_moe", hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                      num_hidden_layers=1, intermediate_size=8, vocab_size=20, num_experts=3)
        assert spec_from_dict(config).num_experts == 8  # num_experts is not an alias here: the default stands
        assert spec_from_dict({**config, "model_type": "mixtral"}).num_experts == 3
    finally:
        families.remove_path(tmp_path)


def test_parameters_kept_in_fp32_cost_four_bytes():
    spec = spec_from_dict(ERNIE)
    layout = parameter_layout(spec)
    kept = [g for g in (*layout.linears, *layout.tensors) if g.dtype == "fp32" and g.kind != "buffer"]
    assert sorted(g.name for g in kept) == ["mlp.gate", "mlp.gate.moe_statics.e_score_correction_bias"]
    elements = 2 * (3 * 16 + 3)  # two MoE layers (1 and 2): router [3, 16] and correction bias [1, 3]
    assert layout.own_dtype_extra_bytes(2) == 2 * elements and layout.own_dtype_extra_bytes(4) == 0
    bf16, fp32 = Workload(dtype="bf16"), Workload(dtype="fp32")
    # in bf16 only the compute-dtype parameters halve
    assert memcal.weight_bytes(spec, fp32) - memcal.weight_bytes(spec, bf16) == 2 * (layout.parameters - elements)


def test_weight_bytes_equal_the_model_with_its_fp32_router():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    spec = spec_from_dict(ERNIE)
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        config = CONFIG_MAPPING["ernie4_5_moe"].from_dict({k: v for k, v in ERNIE.items() if k != "model_type"})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        assert memcal.weight_bytes(spec, Workload(dtype=name)) == held, name
