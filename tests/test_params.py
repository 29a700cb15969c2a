"""`parameter_layout` against what transformers 5.23 and bitsandbytes really build.

Tiny configs of every family are instantiated on the meta device (no memory, milliseconds) and their
tensors compared group by group with the analytic layout. The `quantizable` flags are checked against
a real bitsandbytes load on CPU. The recipe (``from_config`` takes no ``quantization_config``):

    model = AutoModelForCausalLM.from_config(config)          # real (tiny) weights on CPU
    model.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(folder, device_map="cpu",
                                         quantization_config=BitsAndBytesConfig(load_in_8bit=True))

which runs transformers' own `replace_with_bnb_linear` with its own skip list (lm_head, tied keys).
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from estimator.errors import MemcalError
from estimator.params import Embedding, LinearGroup, ParamLayout, parameter_layout
from estimator.spec import load_spec, spec_from_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import CONFIG_MAPPING, AutoModelForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

# Tiny configs: every family, with the variants that change the layout (ties, biases, GQA/MQA, MoE,
# a head_dim that is not hidden / heads, gpt_bigcode without multi-query).
# pad_token_id: phi3's default (32000) would not fit a tiny vocabulary.
_LLAMA = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
              pad_token_id=0)
TINY = {
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=40, vocab_size=64),
    "gpt2-untied-inner": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=64,
                              n_inner=24, tie_word_embeddings=False),
    "gpt_bigcode-mqa": dict(model_type="gpt_bigcode", n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=64),
    "gpt_bigcode-mha": dict(model_type="gpt_bigcode", n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=64,
                            multi_query=False, n_inner=40),
    "llama-gqa": dict(model_type="llama", num_key_value_heads=2, **_LLAMA),
    "llama-biases-tied": dict(model_type="llama", num_key_value_heads=4, attention_bias=True, mlp_bias=True,
                              tie_word_embeddings=True, **_LLAMA),
    "llama-head_dim": dict(model_type="llama", num_key_value_heads=1, head_dim=16, **_LLAMA),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=8, **_LLAMA),
    "mixtral": dict(model_type="mixtral", num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **_LLAMA),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, **_LLAMA),
    "qwen2-tied": dict(model_type="qwen2", num_key_value_heads=1, tie_word_embeddings=True, **_LLAMA),
    "phi3": dict(model_type="phi3", num_key_value_heads=2, **_LLAMA),
    "gemma": dict(model_type="gemma", num_key_value_heads=1, head_dim=8, **_LLAMA),
    "gemma-bias-untied": dict(model_type="gemma", num_key_value_heads=2, head_dim=12, attention_bias=True,
                              tie_word_embeddings=False, **_LLAMA),
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=8, sliding_window=8, **_LLAMA),
}


def hf_config(config: dict):
    """The transformers config object, built as `from_pretrained` builds it from a config.json."""
    return CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))


def meta_model(config: dict):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config(config))


def _key(name: str) -> str:
    """A parameter's name without its model prefix and layer index: 'model.layers.3.mlp.up_proj.weight'
    -> 'mlp.up_proj.weight', 'transformer.wte.weight' -> 'wte.weight'."""
    return re.sub(r"^(model|transformer)\.((layers|h)\.\d+\.)?", "", name)


def observed(model) -> Counter:
    return Counter((_key(n), tuple(p.shape)) for n, p in model.named_parameters())


def expected(layout: ParamLayout, num_experts: int) -> Counter:
    """The (key, shape) multiset that `layout` predicts, norms apart."""
    out: Counter = Counter()
    for g in (*layout.linears, *([layout.lm_head] if layout.lm_head else [])):
        if g.kind == "experts":  # one fused [experts, out, in] tensor per layer
            out[(g.name, (num_experts, g.out_features, g.in_features))] += g.count // num_experts
            continue
        shape = (g.in_features, g.out_features) if g.kind == "conv1d" else (g.out_features, g.in_features)
        out[(f"{g.name}.weight", shape)] += g.count
        if g.bias:
            out[(f"{g.name}.bias", (g.out_features,))] += g.count
    for e in layout.embeddings:
        out[(f"{e.name}.weight", (e.rows, e.dim))] += 1
    return out


def assert_layout_matches(config: dict) -> ParamLayout:
    spec = spec_from_dict(config)
    layout = parameter_layout(spec)
    model = meta_model(config)
    assert layout.parameters == sum(p.numel() for p in model.parameters())
    seen, want = observed(model), expected(layout, spec.num_experts)
    norms = seen - want
    assert want - seen == Counter(), "groups that the model lacks"
    assert all(re.search(r"norm|ln_", key) for key, _ in norms), f"unexplained tensors: {norms}"
    assert sum(count * shape[0] for (_, shape), count in norms.items()) == layout.norm_params
    assert layout.other_params == 0
    return layout


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_of_each_variant_matches_meta_model(name):
    assert_layout_matches(TINY[name])


def test_gpt2_groups_known_answer():
    layout = parameter_layout(load_spec("gpt2"))
    assert layout.parameters == 124_439_808
    assert layout.tied and layout.lm_head is None
    assert layout.embeddings == (Embedding("wte", 50257, 768), Embedding("wpe", 1024, 768))
    assert layout.linears[0] == LinearGroup("attn.c_attn", 768, 2304, True, 12, True, "conv1d")
    assert layout.quantizable_weight_elements == 84_934_656
    assert layout.quantizable_bias_elements == 82_944
    assert layout.quantizable_modules == 48
    assert layout.norm_params == 38_400
    assert layout.embedding_params == 39_383_808
    assert layout.unquantized_params == 124_439_808 - 84_934_656


def test_llama2_7b_known_answer():
    layout = parameter_layout(load_spec("Llama-2-7B"))
    assert layout.parameters == 6_738_415_616
    assert layout.lm_head == LinearGroup("lm_head", 4096, 32000, False, 1, False)
    assert layout.quantizable_weight_elements == 6_476_005_376
    assert layout.quantizable_out_features == 32 * (4 * 4096 + 2 * 11008 + 4096)
    assert layout.quantizable_modules == 32 * 7
    assert layout.unquantized_params == 262_410_240  # two 32000 x 4096 tables and 65 RMSNorms
    assert layout.expert_params == 0


def test_mixtral_experts_and_router_stay_unquantized():
    layout = parameter_layout(load_spec("Mixtral-8x7B"))
    assert layout.parameters == 46_702_792_704
    assert layout.expert_params == 45_097_156_608
    assert layout.quantizable_weight_elements == 1_342_177_280  # attention only
    assert layout.quantizable_modules == 32 * 4
    router = next(g for g in layout.linears if g.kind == "router")
    assert (router.in_features, router.out_features, router.count, router.quantizable) == (4096, 8, 32, False)


def test_qwen2_has_qkv_biases_only():
    groups = {g.name: g.bias for g in parameter_layout(load_spec("Qwen/Qwen2.5-0.5B")).linears}
    assert groups == {"self_attn.q_proj": True, "self_attn.k_proj": True, "self_attn.v_proj": True,
                      "self_attn.o_proj": False, "mlp.gate_proj": False, "mlp.up_proj": False,
                      "mlp.down_proj": False}


def test_phi3_fused_projections():
    layout = parameter_layout(load_spec("microsoft/Phi-3-mini-4k-instruct"))
    assert [(g.name, g.in_features, g.out_features) for g in layout.linears] == [
        ("self_attn.qkv_proj", 3072, 9216), ("self_attn.o_proj", 3072, 3072),
        ("mlp.gate_up_proj", 3072, 16384), ("mlp.down_proj", 8192, 3072)]


def test_starcoder_multi_query_c_attn():
    layout = parameter_layout(load_spec("starcoder"))
    assert layout.linears[0] == LinearGroup("attn.c_attn", 6144, 6144 + 2 * 128, True, 40, True)
    assert layout.parameters == 15_517_456_384


def test_gemma2_has_four_norms_per_layer():
    layout = parameter_layout(load_spec("gemma-2-9b"))
    assert layout.norm_params == (4 * 42 + 1) * 3584
    assert layout.tied


def test_unsupported_family_is_one_line_error():
    spec = spec_from_dict(dict(model_type="not_a_family", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=8, vocab_size=8))
    with pytest.raises(MemcalError) as err:
        parameter_layout(spec)
    assert "not_a_family" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MemcalError):
        spec.parameters


def test_linear_group_rejects_unknown_kind():
    with pytest.raises(ValueError):
        LinearGroup("x", 1, 1, False, 1, False, kind="conv2d")


def test_params_module_imports_neither_torch_nor_transformers():
    code = "import sys, estimator.params, estimator.spec; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- bitsandbytes: which modules a quantized load replaces -------------------------------------------
BNB_CASES = ["gpt2-untied-inner", "gpt_bigcode-mqa", "llama-biases-tied", "llama-gqa", "mistral", "mixtral",
             "qwen2", "phi3", "gemma", "gemma2"]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """Tiny random checkpoints on disk, one per BNB case (real CPU weights, float32)."""
    folders = {}
    for name in BNB_CASES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(hf_config(TINY[name]))
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
    return folders


@pytest.mark.parametrize("mode", ["int8", "nf4"])
@pytest.mark.parametrize("name", BNB_CASES)
def test_quantizable_flags_match_bitsandbytes(saved_tiny, name, mode):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_8bit=True) if mode == "int8" else \
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(saved_tiny[name], quantization_config=quant, device_map="cpu")
    bnb_class = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    replaced = Counter(_key(n) for n, m in model.named_modules() if isinstance(m, bnb_class))
    layout = parameter_layout(spec_from_dict(TINY[name]))
    assert replaced == Counter({g.name: g.count for g in layout.quantizable})
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # lm_head (tied or not) stays unquantized
    stored = sum(m.weight.numel() for m in model.modules() if isinstance(m, bnb_class))
    # int8 keeps one byte per weight; 4-bit packs two weights per uint8 element.
    assert stored == layout.quantizable_weight_elements // (1 if mode == "int8" else 2)
    if name == "mixtral":
        experts = model.model.layers[0].mlp.experts
        assert experts.gate_up_proj.dtype == torch.float32 and experts.gate_up_proj.ndim == 3
