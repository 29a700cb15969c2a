"""Quantized checkpoints (estimator/quant, issue 15): known answers for every format's weight bytes,
the reading of quantization_config, and that nothing is priced dense without saying so.

Known answers come from three places: hand-computed shapes of the library layouts cited in
estimator/quant/formats.toml; llama.cpp's own load logs of published GGUF files (quoted below with
their source); and models the libraries build (tests/test_quant_built.py).
"""
from __future__ import annotations

import json
import math

import pytest

from estimator import Options, Workload, estimate, quant
from estimator.catalogue import entries
from estimator.formulas import memcal
from estimator.quant import gguf as g
from estimator.quant.price import gguf_tensors
from estimator.quant.price import parameter_bytes as price
from estimator.spec import load_spec, spec_from_dict

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 512,
        "tie_word_embeddings": False}
LINEAR, REST, MODULES, BUFFERS = 73_728, 13_120, 14, 64   # tests/test_memcal_formula.py's tiny llama
QWEN7 = json.loads(json.dumps(entries()["Qwen/Qwen2.5-7B"]["config"]))


def spec(qc=None, base=TINY, name="tiny"):
    return spec_from_dict({**base, **({"quantization_config": qc} if qc else {})}, name)


def weights(qc=None, base=TINY, **kw):
    return memcal.weight_bytes(spec(qc, base), Workload(**kw), kw.pop("device", None) if False else None)


# --- bitsandbytes: the config route gives the --weights route's (pinned) numbers ------------------------
def test_bnb_from_config_equals_the_flag_route():
    nf4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
           "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
    assert weights(nf4) == memcal.weight_bytes(spec(), Workload(weights="nf4", double_quant=True))
    assert weights({**nf4, "bnb_4bit_use_double_quant": False}) == memcal.weight_bytes(spec(), Workload(weights="nf4"))
    int8 = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    assert weights(int8, dtype="fp16") == 13_120 * 2 + 73_728 + 4 * 1024 + BUFFERS
    for device in ("cpu", None):
        assert memcal.weight_bytes(spec(nf4), Workload(), device) == \
            memcal.weight_bytes(spec(), Workload(weights="nf4", double_quant=True), device)


def test_bnb_explicit_skip_list_replaces_the_default_skips():
    # get_modules_to_not_convert: an explicit llm_int8_skip_modules drops the lm_head default, and a pattern
    # matches from the start of the name up to a module boundary: "model.layers.1" skips layer 1 only
    s = spec({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_skip_modules": ["model.layers.1"]})
    converted, rows = 36_864 + 6_400, 512 + 100            # layer 0's linears and lm_head (100 rows)
    assert memcal.parameter_bytes(s, Workload()) == (86_848 - converted) * 2 + converted + 4 * rows
    # "mlp" alone matches nothing: not at the start, not a suffix of "...mlp.gate_proj"
    everything = spec({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_skip_modules": ["mlp"]})
    assert memcal.parameter_bytes(everything, Workload()) == (86_848 - 73_728 - 6_400) * 2 + 80_128 + 4 * 1_124


@pytest.mark.parametrize("name, patterns, converted", [
    ("model.layers.1.mlp.gate_proj", ["model.layers.1"], False),
    ("model.layers.11.mlp.gate_proj", ["model.layers.1"], True),
    ("model.layers.11.self_attn.q_proj", [r"model.layers.*"], False),
    ("model.layers.0.mlp.gate_proj", ["mlp.gate"], True),
    ("model.layers.0.mlp.gate", ["mlp.gate"], False), ("lm_head", ["lm_head"], False),
    ("model.decoder.fc1", ["fc1"], False)])
def test_should_convert_is_transformers_rule(name, patterns, converted):
    assert quant.should_convert(name, patterns) is converted
    utils = pytest.importorskip("transformers.quantizers.quantizers_utils")
    assert utils.should_convert_module(name, patterns) is converted


# --- GPTQ and AWQ: shapes by hand from gptqmodel's buffers ------------------------------------------------
def test_gptq_module_layout_by_hand():
    # Qwen2.5-7B k_proj (3584 -> 512, bias), 4-bit, group 128: qweight (3584*4/32, 512) int32, qzeros (28, 64)
    # int32, scales (28, 512) fp16, g_idx (3584,) int32, bias (512,) fp16
    t = quant.module_tensors("gptq", 3584, 512, True, {"bits": 4, "group_size": 128}, 2)
    assert [(n, b, s) for n, b, s in t] == [("qweight", 4, (448, 512)), ("qzeros", 4, (28, 64)),
                                             ("scales", 2, (28, 512)), ("g_idx", 4, (3584,)), ("bias", 2, (512,))]
    # 3-bit packs 32 codes in 3 words; group_size -1 is one group of in_features; 8-bit 4 codes a word
    assert quant.module_tensors("gptq", 4096, 4096, False, {"bits": 3, "group_size": -1}, 2)[:3] == \
        [("qweight", 4, (384, 4096)), ("qzeros", 4, (1, 384)), ("scales", 2, (1, 4096))]
    qzeros = quant.module_tensors("gptq", 4096, 1024, False, {"bits": 8, "group_size": 32}, 2)[1]
    assert qzeros == ("qzeros", 4, (128, 256))


def test_gptq_whole_model_converts_the_block_linears_only():
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
    s = spec(qc, QWEN7, "qwen-gptq")
    h, kv, inter, L, V = 3584, 512, 18944, 28, 152064
    def module(i, o, b):
        tensors = quant.module_tensors("gptq", i, o, b, {"bits": 4, "group_size": 128}, 2)
        return sum(by * math.prod(sh) for _, by, sh in tensors)
    per_layer = module(h, h, True) + 2 * module(h, kv, True) + module(h, h, False) + 2 * module(h, inter, False) \
        + module(inter, h, False) + 2 * h * 2                      # + two RMSNorm weights, bf16
    expected = L * per_layer + 2 * V * h * 2 + h * 2               # embed_tokens + lm_head + final norm, bf16
    assert memcal.parameter_bytes(s, Workload()) == expected
    assert memcal.parameter_bytes(s, Workload()) < 0.4 * memcal.parameter_bytes(s, Workload(weights="dense"))
    keep = {**qc, "modules_in_block_to_quantize": [["self_attn.q_proj"]]}
    assert quant.price.converted_count(spec(keep, QWEN7), quant.scheme_for(spec(keep, QWEN7), Workload()))[0] == L


def test_awq_layouts_by_hand():
    o = {"bits": 4, "group_size": 128}
    assert quant.module_tensors("awq_gemm", 4096, 1024, False, o, 2) == [
        ("qweight", 4, (4096, 128)), ("qzeros", 4, (32, 128)), ("scales", 2, (32, 1024))]
    # gemv: calculate_zeros_width(4096, 128) = ceil(32 / 8) = 4 -> qzeros (1024, 4), scales (1024, 32)
    assert quant.module_tensors("awq_gemv", 4096, 1024, False, o, 2) == [
        ("qweight", 4, (1024, 512)), ("qzeros", 4, (1024, 4)), ("scales", 2, (1024, 32))]
    qc = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True}
    label, notes, warns = quant.describe(spec(qc, QWEN7), Workload())
    assert "awq 4-bit gemm" in label and "196 of 197" in notes[0] and not warns  # all but lm_head


# --- FP8, MXFP4 ---------------------------------------------------------------------------------------
def test_fp8_blocks_and_device_fallback():
    assert quant.module_tensors("fp8", 3584, 18944, False, {"block_out": 128, "block_in": 128, "ue8m0": False,
                                                            "static": False}, 2) == \
        [("weight", 1, (18944, 3584)), ("weight_scale_inv", 4, (148, 28))]
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    s = spec(qc, QWEN7)
    dense = memcal.parameter_bytes(s, Workload(weights="dense"))
    assert memcal.parameter_bytes(s, Workload(), "cpu") == dense        # transformers dequantizes on a CPU
    assert memcal.parameter_bytes(s, Workload(), "cuda") < 0.6 * dense
    assert "dequantized" in quant.describe(s, Workload(), "cpu")[0]


@pytest.fixture
def gpt_oss():
    """gpt-oss-20b's config."""
    return {"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
            "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088,
            "num_local_experts": 32, "num_experts_per_tok": 4, "tie_word_embeddings": False,
            "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}


def test_mxfp4_experts_blocks_and_scales(gpt_oss):
    s = spec_from_dict(gpt_oss, "gpt-oss-20b")
    assert s.parameters == 20_914_757_184       # the dense model's public count (keras-hub gpt_oss_20b_en preset)
    # per layer: gate_up (5760 x 2880) and down (2880 x 2880) per expert: blocks n/2 bytes, one uint8 per 32,
    # an fp32 bias per output (Mxfp4GptOssExperts)
    experts = 24 * 32 * ((5760 * 2880 + 2880 * 2880) * (1 / 2 + 1 / 32) + 4 * (5760 + 2880))
    dense_experts = 24 * 32 * (5760 * 2880 + 2880 * 2880 + 5760 + 2880) * 2
    full = memcal.parameter_bytes(s, Workload(weights="dense"))
    assert memcal.parameter_bytes(s, Workload(), "cuda") == full - dense_experts + experts
    assert memcal.parameter_bytes(s, Workload(), "cpu") == full       # dequantized without use_kernels


# --- compressed-tensors -------------------------------------------------------------------------------
W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
         "ignore": ["lm_head", "re:.*mlp.down_proj$"],
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
             "num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": True}}}}


def test_compressed_tensors_targets_ignore_and_both_states():
    s = spec(W4A16)
    assert quant.price.converted_count(s, quant.scheme_for(s, Workload()))[0] == 2 * 6   # down_proj ignored
    dense = memcal.parameter_bytes(s, Workload(weights="dense"))
    decompressed = memcal.parameter_bytes(s, Workload())
    loaded = price(s, quant.scheme_for(s, Workload()), 2, dense, None, loaded=True)
    # each converted module adds weight_scale (out x in/32, bf16) and weight_shape (2 int64) when decompressed
    converted_in_out = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128)]
    assert decompressed - dense == 2 * sum(o * (i // 32) * 2 + 16 for i, o in converted_in_out)
    assert loaded - dense == 2 * sum(o * i // 2 - o * i * 2 + o * (i // 32) * 2 + 16 for i, o in converted_in_out)
    assert any("decompresses" in n for n in quant.describe(s, Workload())[1])


# --- GGUF -----------------------------------------------------------------------------------------------
def test_ggml_type_table_is_ggufs():
    constants = pytest.importorskip("gguf.constants")
    for t, (block, size) in constants.GGML_QUANT_SIZES.items():
        if t.name in g.GGML_TYPES:
            assert g.GGML_TYPES[t.name] == (block, size), t.name
    assert g.GGML_TYPES["Q4_0"] == (32, 18) and g.GGML_TYPES["Q4_K"] == (256, 144)
    assert g.GGML_TYPES["Q6_K"] == (256, 210)


def _summary(s, ftype):
    counts, total = {}, 0
    for _, kind, size, n in gguf_tensors(s, ftype):
        counts[kind] = counts.get(kind, 0) + n
        total += size
    return counts, total


def test_q4_k_m_mixture_matches_llama_cpps_load_log_of_llama_3_1_8b():
    # DeepSeek-R1-Distill-Llama-8B Q4_K_M (Llama-3.1-8B's architecture), llama.cpp's load log quoted in
    # gpustack/gpustack issue #1060: "type f32: 66, q4_K: 193, q6_K: 33 tensors; file size = 4.58 GiB (4.89 BPW)"
    s = load_spec("meta-llama/Llama-3.1-8B")
    counts, total = _summary(s, "Q4_K_M")
    assert counts == {"F32": 66, "Q4_K": 193, "Q6_K": 33}
    assert f"{total / 2**30:.2f}" == "4.58" and f"{total * 8 / s.parameters:.2f}" == "4.89"


def test_q4_k_m_mixture_matches_llama_cpps_load_log_of_a_qwen2_14b():
    # DeepSeek-R1-Distill-Qwen-14B Q4_K_M (Qwen2.5-14B's architecture): 579 tensors, "model params = 14.77 B,
    # model size = 8.37 GiB (4.87 BPW)" (llama.cpp log quoted in Jeffser/Alpaca issue #572)
    q14 = {**QWEN7, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
           "num_attention_heads": 40, "num_key_value_heads": 8}
    s = spec_from_dict(q14, "qwen2-14b")
    counts, total = _summary(s, "Q4_K_M")
    assert sum(counts.values()) == 579 and f"{s.parameters / 1e9:.2f}" == "14.77"
    assert f"{total / 2**30:.2f}" == "8.37" and f"{total * 8 / s.parameters:.2f}" == "4.87"


def test_mixtral_q4_0_keeps_attention_v_and_k_in_q8_0():
    # Mixtral 8x7B Q4_0 (ollama/ollama PR #5469's load log): q8_0 64 tensors (attn_k, attn_v: n_expert == 8),
    # q6_K 1 (output), f16 32 (the routers, as the source file had them), f32 65 (norms)
    counts, _ = _summary(load_spec("mistralai/Mixtral-8x7B-v0.1"), "Q4_0")
    assert (counts["Q8_0"], counts["Q6_K"], counts["F16"], counts["F32"]) == (64, 1, 32, 65)


def test_memcal_prices_gguf_by_the_mixture_and_says_transformers_dequantizes():
    s = load_spec("meta-llama/Llama-3.1-8B")
    assert memcal.parameter_bytes(s, Workload(weights="Q4_K_M")) == quant.gguf_bytes(s, "Q4_K_M")
    label, notes, _ = quant.describe(s, Workload(weights="Q4_K_M"))
    assert "Q4_K_M" in label and any("dequantizes a GGUF" in n for n in notes)


def test_gguf_file_tensor_table_is_read_exactly(tmp_path):
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(15)
    data = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        step()
    writer.close()
    table = quant.read_file(path)
    assert table["total_bytes"] == 8 * g.row_bytes("Q8_0", 256) + 256 * 4 == 8 * 272 + 1024
    assert table["file_type"] == 15 and table["by_type"]["Q8_0"]["tensors"] == 1
    r = estimate(TINY, batch=1, seq=8, options=Options(gguf_file=str(path)), formulas=["memcal"])
    assert r.breakdowns["memcal"].weights_bytes == table["total_bytes"]


# --- never silent -------------------------------------------------------------------------------------
def test_unknown_quant_method_warns_and_is_named(capsys):
    r = estimate({**TINY, "quantization_config": {"quant_method": "exl3", "bits": 4}}, batch=1, seq=8)
    assert any("exl3" in w and "not modelled" in w for w in r.warnings)
    assert r.to_dict()["weight_format"]["warnings"] and "exl3" in r.to_dict()["weight_format"]["label"]
    from memcal.cli import main
    path = "/tmp/memcal-test-exl3.json"
    with open(path, "w") as f:
        json.dump({**TINY, "quantization_config": {"quant_method": "exl3"}}, f)
    assert main(["estimate", path, "--json"]) == 0
    out = capsys.readouterr()
    assert "memcal: warning:" in out.err and "exl3" in out.err and json.loads(out.out)["warnings"]


@pytest.mark.parametrize("qc, option", [
    ({"quant_method": "gptq", "bits": 4, "dynamic": {"-:.*down": {}}}, "dynamic"),
    ({"quant_method": "awq", "bits": 4, "version": "exllama"}, "exllama"),
    ({"quant_method": "fp8", "modules_to_convert": ["embed_tokens"]}, "modules_to_convert"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_has_fp16_weight": True}, "has_fp16_weight"),
    ({**W4A16, "kv_cache_scheme": {"num_bits": 8}}, "kv_cache_scheme"),
    ({"quant_method": "torchao", "quant_type": {"default": {"_type": "Float8WeightOnlyConfig"}}},
     "Float8WeightOnlyConfig")])
def test_unmodelled_options_warn(qc, option):
    assert any(option in w for w in estimate({**TINY, "quantization_config": qc}, batch=1, seq=8).warnings)


def test_every_estimate_names_its_weight_format_and_dense_override_says_so():
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    r = estimate({**QWEN7, "quantization_config": qc}, batch=1, seq=8)
    assert r.to_dict()["weight_format"]["method"] == "gptq"
    assert all("quantization_config" in b.notes[-1] for fid, b in r.breakdowns.items() if fid != "memcal")
    forced = quant.describe(spec(qc, QWEN7), Workload(weights="dense"))
    assert forced[0].startswith("dense") and any("overridden by --weights dense" in n for n in forced[1])
    assert quant.describe(spec(), Workload())[0] == "dense bf16"


def test_catalogue_quantized_entries_are_priced_as_published():
    quantized = {r: e for r, e in entries().items() if "quantization_config" in e["config"]}
    assert len(quantized) >= 3
    for repo in quantized:
        s = load_spec(repo)
        scheme = quant.scheme_for(s, Workload())
        assert scheme.method != "dense" and not scheme.warnings, repo
        assert memcal.parameter_bytes(s, Workload(), "cuda") < memcal.parameter_bytes(s, Workload(weights="dense"))


# --- bitsandbytes 4-bit compute dtype on CUDA ---------------------------------------------------------------
def test_bnb_compute_dtype_changes_the_cuda_estimate():
    llama = entries()["meta-llama/Llama-3.2-1B"]["config"]
    qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
          "bnb_4bit_compute_dtype": "float32"}
    cfg = {**llama, "quantization_config": qc}
    w = Workload(batch=1, prompt_len=512, dtype="fp16")
    def act(**options):
        return estimate(cfg, w, options=Options(**options), formulas=["memcal"]).breakdowns["memcal"]
    fp32, fp16, cpu = act(device="cuda"), act(device="cuda", bnb_compute_dtype="fp16"), act()
    # the fp32 default dequantizes the largest weight (gate/up, 2048 x 8192) to fp32 and casts input and output
    assert fp32.activation_bytes - fp16.activation_bytes >= 2048 * 8192 * 2
    assert any("compute dtype fp32" in n for n in fp32.notes)
    assert cpu.activation_bytes < fp16.activation_bytes
