"""The bundled catalogue: every entry's config instantiates (on the meta device) into a model with the
public parameter count, and the spec reads the same attention shapes and layer types as transformers.

Meta-device models hold no memory: all of them, 70B ones included, build in about two seconds.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from estimator import catalogue
from estimator.params import parameter_layout
from estimator.spec import load_spec, spec_from_dict, supported_families

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import CONFIG_MAPPING, AutoModelForCausalLM  # noqa: E402
from transformers.cache_utils import get_layer_types_and_kwargs  # noqa: E402

transformers.logging.set_verbosity_error()

FOLDER = Path(catalogue.__file__).parent
ENTRIES = catalogue.entries()
REPOS = sorted(ENTRIES)
# Public counts of the models that /work/shared/reference/parameter-counts.md does not list.
EXTRA_PUBLIC_COUNTS = {"Qwen/Qwen2.5-0.5B": 494_032_768, "Qwen/Qwen2.5-72B": 72_706_203_648,
                       "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
                       "openai/gpt-oss-20b": 20_914_757_184,
                       # Hugging Face safetensors totals (the Hub API's "safetensors.total")
                       "google/gemma-3-1b-it": 999_885_952, "allenai/OLMo-2-1124-7B": 7_298_617_344,
                       "HuggingFaceTB/SmolLM3-3B": 3_075_098_624,
                       "ibm-granite/granite-3.3-8b-instruct": 8_170_864_640}


def hf_config(config: dict):
    """The transformers config object, as `from_pretrained` builds it from this config.json."""
    return CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))


@pytest.fixture(scope="module")
def built():
    """repo id -> (transformers config, meta-device model); built once for the whole module."""
    out = {}
    for repo in REPOS:
        config = hf_config(ENTRIES[repo]["config"])
        with torch.device("meta"):
            out[repo] = config, AutoModelForCausalLM.from_config(config)
    return out


def test_catalogue_holds_the_required_models():
    required = {
        "openai-community/gpt2", "openai-community/gpt2-medium", "meta-llama/Llama-2-7b-hf",
        "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf", "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Meta-Llama-3-70B", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B",
        "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.3-70B-Instruct", "mistralai/Mistral-7B-v0.1",
        "mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-72B",
        "microsoft/phi-4", "microsoft/Phi-3-mini-4k-instruct", "google/gemma-2-9b", "bigcode/starcoder",
    }
    assert required <= set(ENTRIES)
    assert all(ENTRIES[repo]["parameters"] for repo in required), "each required model has its public count"
    assert len(ENTRIES) >= 22
    assert {e["config"]["model_type"] for e in ENTRIES.values()} == set(supported_families())


@pytest.mark.parametrize("path", sorted(FOLDER.glob("*.json")), ids=lambda p: p.stem)
def test_entry_format(path):
    entry = json.loads(path.read_text())
    assert set(entry) == {"repo_id", "aliases", "source", "parameters", "config"}
    assert path.name == entry["repo_id"].replace("/", "__") + ".json"
    assert entry["source"] == f"https://huggingface.co/{entry['repo_id']}/blob/main/config.json"
    assert isinstance(entry["aliases"], list) and all(isinstance(a, str) for a in entry["aliases"])
    assert entry["parameters"] is None or (isinstance(entry["parameters"], int) and entry["parameters"] > 0)
    assert entry["config"]["model_type"] in supported_families()
    assert "_name_or_path" not in entry["config"]  # `lookup` sets it to the repo id


def test_names_are_unambiguous():
    """No alias or short name of one entry names another entry."""
    seen: dict[str, str] = {}
    for repo, entry in ENTRIES.items():
        for key in {repo.lower(), repo.split("/")[-1].lower(), *(a.lower() for a in entry["aliases"])}:
            assert seen.setdefault(key, repo) == repo, f"{key!r} names both {seen[key]} and {repo}"


@pytest.mark.parametrize("repo", REPOS)
def test_parameters_match_transformers_and_public_count(repo, built):
    spec = load_spec(repo)
    _, model = built[repo]
    assert spec.parameters == sum(p.numel() for p in model.parameters())
    public = ENTRIES[repo]["parameters"]
    if public is not None:
        assert spec.parameters == public
    assert EXTRA_PUBLIC_COUNTS.get(repo, public) == public


@pytest.mark.parametrize("repo", REPOS)
def test_layer_types_match_transformers_cache_view(repo, built):
    spec = load_spec(repo)
    config, _ = built[repo]
    types, kwargs = get_layer_types_and_kwargs(config)
    assert spec.layer_types == tuple(types)
    windows = {kw["sliding_window"] for t, kw in zip(types, kwargs) if t == "sliding_attention"}
    assert windows == ({spec.sliding_window} if spec.sliding_layers else set())


@pytest.mark.parametrize("repo", REPOS)
def test_attention_shapes_match_modules(repo, built):
    """The spec's head sizes are the attention modules' own (every attention module that has them)."""
    spec = load_spec(repo)
    _, model = built[repo]
    # MLA keeps separate key and value widths; GPTNeoXAttention names its head_dim head_size
    names = ("head_dim", "qk_head_dim", "v_head_dim", "head_size")
    modules = [m for m in model.modules() if type(m).__name__.endswith("Attention") and
               any(hasattr(m, n) for n in names)]
    assert modules, "no attention module found"
    for m in modules:
        for n in names:
            if isinstance(getattr(m, n, None), int):
                want = spec.head_dim if n in ("head_dim", "head_size") else spec.dim(n)
                assert getattr(m, n) == want, (type(m).__name__, n)
    kv = {getattr(m, "num_key_value_heads", None) or getattr(m, "kv_heads", None) for m in modules} - {None}
    assert kv <= {spec.num_kv_heads}
    assert spec.num_kv_heads == getattr(model.config.get_text_config(), "num_key_value_heads", spec.num_kv_heads)


@pytest.mark.parametrize("repo", REPOS)
def test_spec_from_transformers_config_equals_spec_from_json(repo, built):
    """The same model read from config.json and from transformers' parsed config (its to_dict)."""
    config, _ = built[repo]
    from_json = load_spec(repo)
    from_object = load_spec(config)
    assert replace(from_object, name=from_json.name) == from_json


def test_known_shapes():
    """A few literal facts, to catch a silently edited config."""
    llama3 = load_spec("llama-3-8b")
    assert (llama3.num_layers, llama3.num_kv_heads, llama3.head_dim, llama3.vocab_size) == (32, 8, 128, 128256)
    assert load_spec("Llama-2-70B").attention_kind == "GQA"
    assert load_spec("starcoder").attention_kind == "MQA"
    assert load_spec("gpt2").attention_kind == "MHA"
    mistral = load_spec("mistralai/Mistral-7B-v0.1")
    assert (mistral.sliding_window, mistral.sliding_layers) == (4096, 32)
    phi3 = load_spec("Phi-3-mini")
    assert (phi3.sliding_window, phi3.sliding_layers, phi3.head_dim) == (2047, 32, 96)
    gemma2 = load_spec("gemma-2-9b")
    assert (gemma2.sliding_window, gemma2.sliding_layers, gemma2.layer_types[:2]) == \
        (4096, 21, ("sliding_attention", "full_attention"))
    qwen = load_spec("qwen2.5-7b")
    assert (qwen.sliding_window, qwen.sliding_layers, qwen.num_kv_heads) == (None, 0, 4)
    mixtral = load_spec("mixtral-8x7b")
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.sliding_window) == (8, 2, None)
    assert load_spec("Llama-3.2-1B").tie_word_embeddings and not load_spec("Llama-3.1-8B").tie_word_embeddings


def test_layout_of_every_entry_is_consistent():
    for repo in REPOS:
        layout = parameter_layout(load_spec(repo))
        assert layout.unquantized_params + layout.quantizable_weight_elements == layout.parameters
        assert layout.quantizable_modules > 0
        assert spec_from_dict(ENTRIES[repo]["config"]).parameters == layout.parameters
