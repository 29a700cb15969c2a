"""Quantized models the libraries build here: memcal's weight bytes equal the bytes of the parameters,
buffers and quantization state of the model transformers builds (harness/build.py weight_tensors).

bitsandbytes and compressed-tensors quantize on the CPU, so the harness builds a checkpoint from a
config's quantization_config (random weights, quantized or compressed as a real checkpoint is) and
loads it; fine-grained FP8 and MXFP4 layers are built by transformers' own replace functions on the
meta device (no kernels needed to allocate them). Each test skips where its library is missing.
"""
from __future__ import annotations

import math

import pytest

from estimator import Workload, quant
from estimator.formulas import memcal
from estimator.spec import spec_from_dict

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 256,
        "tie_word_embeddings": False}


def built_bytes(spec, workload):
    from harness.measure import build_model
    return build_model(spec, workload, "cpu").weight_bytes


@pytest.mark.slow
@pytest.mark.parametrize("qc", [
    {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_skip_modules": ["model.layers.1", "lm_head"]},
    {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
     "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"}], ids=["int8-skip", "nf4-dq"])
def test_bitsandbytes_checkpoint_from_its_config(qc):
    pytest.importorskip("bitsandbytes")
    spec = spec_from_dict({**TINY, "quantization_config": qc}, "tiny-bnb")
    w = Workload(dtype="bf16", prompt_len=8)
    assert built_bytes(spec, w) == memcal.weight_bytes(spec, w, "cpu")


CT = {"quant_method": "compressed-tensors", "quantization_status": "compressed", "ignore": ["lm_head"]}
CT_GROUPS = {
    "w4a16": {"format": "pack-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": True}}}},
    "fp8-channel": {"format": "float-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}}},
    "w8a8-regex": {"format": "int-quantized", "ignore": ["lm_head", "re:.*down_proj$"],
                   "config_groups": {"group_0": {"targets": ["re:.*proj$"], "weights": {
                       "num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
                       "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}}},
    # (an asymmetric pack-quantized checkpoint does not load with compressed-tensors 0.20 + transformers 5.23:
    # the packed zero point's shape mismatches what the load initialises; priced from the compressor's code)
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CT_GROUPS))
def test_compressed_tensors_checkpoint_loaded_and_decompressed(name, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from harness.measure import storages_bytes
    from harness.measure._build import _config, _random, weight_tensors
    from harness.measure._quant_build import compressed_checkpoint
    qc = {**CT, **CT_GROUPS[name]}
    spec = spec_from_dict({**TINY, "quantization_config": qc}, "tiny-ct")
    w = Workload(dtype="bf16", prompt_len=8)
    compressed_checkpoint(_random(_config(spec, w), w, "cpu"), qc, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    dense = memcal.parameter_bytes(spec, Workload(weights="dense"))
    loaded = quant.price.parameter_bytes(spec, quant.scheme_for(spec, w), 2, dense, "cpu", loaded=True)
    assert storages_bytes(weight_tensors(model)) == loaded + memcal.buffer_bytes(spec, w)
    with torch.no_grad():  # the first forward decompresses (compressed-tensors' hook): the steady state
        model(input_ids=torch.zeros((1, 2), dtype=torch.long))
    assert storages_bytes(weight_tensors(model)) == memcal.weight_bytes(spec, w, "cpu")


@pytest.mark.slow
def test_harness_builds_a_compressed_tensors_config_like_measure_does():
    pytest.importorskip("compressed_tensors")
    spec = spec_from_dict({**TINY, "quantization_config": {**CT, **CT_GROUPS["w4a16"]}}, "tiny-ct")
    w = Workload(dtype="bf16", prompt_len=8)
    assert built_bytes(spec, w) == memcal.weight_bytes(spec, w, "cpu")


def _meta_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@pytest.mark.parametrize("family, extra", [
    ("llama", {}), ("qwen2", {}),
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2})], ids=["llama", "qwen2-bias", "mixtral-experts"])
@pytest.mark.parametrize("block", [[128, 128], [32, 64], None], ids=["128x128", "32x64", "per-tensor"])
def test_fine_grained_fp8_layers_as_transformers_builds_them(family, extra, block):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear
    from transformers.utils.quantization_config import FineGrainedFP8Config
    config = {**TINY, "model_type": family, "hidden_size": 256, "intermediate_size": 320, **extra}
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": block}
    spec = spec_from_dict({**config, "quantization_config": qc}, "tiny-fp8")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.bfloat16)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # from_pretrained builds the model under its dtype
    try:
        replace_with_fp8_linear(model, modules_to_not_convert=["lm_head"],
                                quantization_config=FineGrainedFP8Config(weight_block_size=block))
    finally:
        torch.set_default_dtype(previous)
    params = _meta_bytes(model) - memcal.buffer_bytes(spec, Workload())
    assert params == memcal.parameter_bytes(spec, Workload(), "cuda")


def test_mxfp4_experts_as_transformers_builds_them():
    from types import SimpleNamespace

    from transformers.integrations.mxfp4 import Mxfp4GptOssExperts
    with torch.device("meta"):
        experts = Mxfp4GptOssExperts(SimpleNamespace(num_local_experts=32, intermediate_size=2880, hidden_size=2880))
    held = {n: (tuple(p.shape), p.element_size()) for n, p in experts.named_parameters()}
    # the packed blocks and fp32 biases transformers allocates; the uint8 scales (one per 32) come beside them
    gate_up = quant.module_tensors("mxfp4_experts", 2880, 5760, True, {}, 2)
    down = quant.module_tensors("mxfp4_experts", 2880, 2880, True, {}, 2)
    assert held["gate_up_proj"] == ((32, *gate_up[0][2]), 1) and held["down_proj"] == ((32, *down[0][2]), 1)
    assert held["gate_up_proj_bias"] == ((32, 5760), 4) and held["down_proj_bias"] == ((32, 2880), 4)
    assert math.prod(gate_up[1][2]) == 5760 * 2880 // 32
