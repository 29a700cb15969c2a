"""Reading a model: every way of naming one, the defaults transformers applies, and one-line errors."""
from __future__ import annotations

import json

import pytest

from estimator.catalogue import lookup, resolve
from estimator.errors import MemcalError
from estimator.spec import ModelSpec, load_spec, spec_from_dict

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=2, vocab_size=100, max_position_embeddings=256)


def one_line_error(call, *args) -> str:
    with pytest.raises(MemcalError) as err:
        call(*args)
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --- ways in -------------------------------------------------------------------------------------
def test_from_dict():
    spec = load_spec(LLAMA)
    assert (spec.family, spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == \
        ("llama", 64, 2, 8, 2, 8)
    assert (spec.intermediate_size, spec.vocab_size, spec.tie_word_embeddings) == (128, 100, False)
    assert spec.name == "llama" and spec.attention_kind == "GQA" and not spec.is_moe
    assert spec.layer_types == ("full_attention",) * 2 and spec.sliding_window is None
    assert spec.parameters == 2 * 100 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 128 + 2 * 64) + 64
    assert load_spec(LLAMA, name="mine").name == "mine"
    assert load_spec(spec) is spec


def test_from_transformers_config_object():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**{k: v for k, v in LLAMA.items() if k != "model_type"})
    spec = load_spec(config)
    assert replace_name(spec) == replace_name(load_spec(LLAMA))
    gpt2 = load_spec(transformers.GPT2Config(n_embd=48, n_layer=3, n_head=4, vocab_size=50))
    assert (gpt2.hidden_size, gpt2.num_layers, gpt2.intermediate_size, gpt2.max_position_embeddings) == \
        (48, 3, 192, 1024)


def replace_name(spec: ModelSpec) -> ModelSpec:
    from dataclasses import replace
    return replace(spec, name="x")


def test_from_config_json_path_and_model_folder(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(LLAMA))
    from_file = load_spec(tmp_path / "tiny" / "config.json")
    from_folder = load_spec(str(tmp_path / "tiny"))
    assert from_file.name == "config" and from_folder.name == "tiny"
    assert replace_name(from_file) == replace_name(from_folder) == replace_name(load_spec(LLAMA))


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b-hf", "META-LLAMA/llama-2-7B-HF", "Llama-2-7b-hf",
                                  "llama-2-7b-hf", "Llama-2-7B", " llama2-7b "])
def test_from_catalogue_name(name):
    spec = load_spec(name)
    assert spec.name == "meta-llama/Llama-2-7b-hf"
    assert spec.parameters == 6_738_415_616


def test_catalogue_lookup_helpers():
    assert resolve("GPT2") == "openai-community/gpt2" and resolve("gpt2-medium") == "openai-community/gpt2-medium"
    assert resolve("no-such-model") is None and lookup("no-such-model") is None
    assert lookup("gpt2")["_name_or_path"] == "openai-community/gpt2"


# --- defaults, as transformers' config classes apply them ------------------------------------------------
def test_config_without_kv_heads_means_mha():
    config = {k: v for k, v in LLAMA.items() if k != "num_key_value_heads"}
    spec = load_spec(config)
    assert spec.num_kv_heads == 8 and spec.attention_kind == "MHA"
    assert load_spec({**config, "num_key_value_heads": None}).num_kv_heads == 8


MINIMAL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=16, vocab_size=128,
               pad_token_id=0)


@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral", "qwen2", "phi3", "gemma", "gemma2"])
def test_absent_keys_take_the_config_class_defaults(family):
    """kv heads, head_dim and sliding window left out of config.json: the spec follows transformers
    (mistral and mixtral default to 8 KV heads, qwen2 to 32, gemma to 16, gemma2 to 4; gemma's head_dim
    is 256; mistral and gemma2 slide over 4096 tokens)."""
    transformers = pytest.importorskip("transformers")
    from transformers.cache_utils import get_layer_types_and_kwargs

    config = dict(model_type=family, **MINIMAL)
    if family == "qwen2":
        config["num_attention_heads"] = 32  # its default of 32 KV heads must divide the heads
    hf = transformers.CONFIG_MAPPING[family].from_dict(dict(config))
    spec = load_spec(config)
    assert spec.num_kv_heads == hf.num_key_value_heads
    assert spec.head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    types, kwargs = get_layer_types_and_kwargs(hf)
    assert spec.layer_types == tuple(types)
    assert spec.sliding_window == next((kw["sliding_window"] for kw in kwargs if kw), None)
    expected = {"llama": (16, 4, None), "mistral": (8, 4, 4096), "mixtral": (8, 4, None),
                "qwen2": (32, 2, None), "phi3": (16, 4, None), "gemma": (16, 256, None),
                "gemma2": (4, 256, 4096)}[family]
    assert (spec.num_kv_heads, spec.head_dim, spec.sliding_window) == expected


def test_qwen2_sliding_layers_from_max_window_layers():
    transformers = pytest.importorskip("transformers")
    from transformers.cache_utils import get_layer_types_and_kwargs

    config = dict(model_type="qwen2", **{**MINIMAL, "num_hidden_layers": 3}, num_key_value_heads=4,
                  use_sliding_window=True, sliding_window=16, max_window_layers=1)
    spec = load_spec(config)
    assert spec.layer_types == ("full_attention", "sliding_attention", "sliding_attention")
    assert spec.sliding_window == 16 and spec.sliding_layers == 2
    types, _ = get_layer_types_and_kwargs(transformers.CONFIG_MAPPING["qwen2"].from_dict(config))
    assert tuple(types) == spec.layer_types
    off = load_spec({**config, "use_sliding_window": False})
    assert off.sliding_window is None and off.sliding_layers == 0


def test_explicit_layer_types_win():
    types = ["sliding_attention", "full_attention"]
    spec = load_spec({**LLAMA, "model_type": "gemma2", "head_dim": 8, "layer_types": types, "sliding_window": 32})
    assert spec.layer_types == tuple(types) and spec.sliding_window == 32
    assert "2 entries for 3 layers" in one_line_error(load_spec, {**LLAMA, "num_hidden_layers": 3,
                                                                  "layer_types": types})


def test_mixtral_experts():
    spec = load_spec({**LLAMA, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2})
    assert (spec.num_experts, spec.experts_per_token, spec.is_moe) == (4, 2, True)
    assert load_spec({**LLAMA, "model_type": "mixtral"}).num_experts == 8  # MixtralConfig's default
    assert load_spec({**LLAMA, "model_type": "mixtral", "num_experts": 3}).num_experts == 3  # attribute_map alias
    assert load_spec({**LLAMA, "num_experts": 4}).num_experts == 0  # a dense family ignores the key


def test_gpt_bigcode_multi_query():
    base = dict(model_type="gpt_bigcode", n_embd=64, n_layer=2, n_head=8, vocab_size=100)
    assert load_spec(base).num_kv_heads == 1
    assert load_spec({**base, "multi_query": False}).num_kv_heads == 8


def test_unsupported_family_still_reads():
    """The spec reads any llama-like config; only the parameter layout refuses unknown families."""
    spec = load_spec({**LLAMA, "model_type": "qwen3"})
    assert spec.family == "qwen3" and spec.declares_kv_heads


# --- errors: one line, naming the problem ------------------------------------------------------------------
def test_missing_hidden_size():
    config = {k: v for k, v in LLAMA.items() if k != "hidden_size"}
    assert "'hidden_size'" in one_line_error(load_spec, config)
    gpt2 = dict(model_type="gpt2", n_layer=2, n_head=2, vocab_size=10)
    assert "'n_embd'" in one_line_error(load_spec, gpt2)


@pytest.mark.parametrize("value", ["4096", 64.5, True, -64, 0, [64]])
def test_non_integer_fields(value):
    message = one_line_error(load_spec, {**LLAMA, "hidden_size": value})
    assert "'hidden_size' must be a positive integer" in message


def test_integral_float_is_accepted():
    assert load_spec({**LLAMA, "hidden_size": 64.0}).hidden_size == 64


def test_bad_sliding_window_and_head_split():
    assert "'sliding_window'" in one_line_error(load_spec, {**LLAMA, "model_type": "mistral", "sliding_window": "x"})
    assert "do not split" in one_line_error(load_spec, {**LLAMA, "num_key_value_heads": 3})
    gpt2 = dict(model_type="gpt2", n_embd=30, n_layer=2, n_head=4, vocab_size=10)
    assert "does not split" in one_line_error(load_spec, gpt2)


def test_no_model_type():
    config = {k: v for k, v in LLAMA.items() if k != "model_type"}
    assert "model_type" in one_line_error(load_spec, config)


def test_not_a_mapping():
    assert "JSON object" in one_line_error(spec_from_dict, [1, 2])
    assert "int" in one_line_error(load_spec, 42)


def test_bad_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama",')
    assert "not valid JSON" in one_line_error(load_spec, path)
    folder = tmp_path / "model"
    folder.mkdir()
    assert "needs a config.json" in one_line_error(load_spec, folder)
    assert "no such file" in one_line_error(load_spec, str(tmp_path / "missing.json"))


@pytest.mark.parametrize("name", ["some-org/unknown-model", "unknown-model"])
def test_unknown_name_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = one_line_error(load_spec, name)
    assert name in message and "config.json" in message and "catalogue" in message


@pytest.mark.parametrize("family", ["gpt2", "gpt_bigcode", "llama", "mistral", "mixtral", "qwen2", "phi3", "gemma",
                                    "gemma2", "qwen3", "starcoder2"])
def test_declares_kv_heads_follows_the_config_class(family):
    """The 002 notebook tests hasattr(config, 'num_key_value_heads'): mirror transformers 5.23's classes."""
    transformers = pytest.importorskip("transformers")
    declared = hasattr(transformers.CONFIG_MAPPING[family](), "num_key_value_heads")
    config = {**LLAMA, "model_type": family, "n_embd": 64, "n_layer": 2, "n_head": 8}
    assert load_spec(config).declares_kv_heads == declared


@pytest.mark.parametrize("config", [
    {"model_type": "qwen3_next", "num_hidden_layers": 2, "layer_types": ["mamba", "attention"]},
    {"model_type": "nemotron_h", "layers_block_type": ["mamba", "attention", "mlp"]},
    {"model_type": "nemotron_h", "layer_types": ["mamba", "attention", "moe"]},  # the class's alias
])
def test_legacy_layer_type_names_read_as_transformers_renames_them(config):
    """transformers renames 'mamba' and 'attention' layer types in every config (_LEGACY_LAYER_TYPE_REMAP)."""
    config = {**config, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    spec = load_spec({**config, "intermediate_size": 32, "vocab_size": 100})
    assert spec.layer_types[:2] == ("linear_attention", "full_attention")
    transformers = pytest.importorskip("transformers")
    from transformers.cache_utils import get_layer_types_and_kwargs
    hf = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
    assert list(spec.layer_types) == get_layer_types_and_kwargs(hf)[0]
