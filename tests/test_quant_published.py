"""Quantized checkpoints as published (issue 15): memcal's weight bytes against the exact byte counts
of real checkpoints on the Hugging Face Hub.

Two kinds of published fact, both exact:

* ``model.safetensors.index.json``'s ``metadata.total_size``: the bytes of every tensor the checkpoint
  stores (no file headers).
* the size of a single-file ``model.safetensors``, from its Git LFS pointer (``size N``) as the Hub's
  commit page shows it. A safetensors file is an 8-byte header length, a JSON header (tensor name, dtype,
  shape, offsets, padded with spaces to a multiple of 8) and the tensor bytes: ``safetensors_bytes``
  rebuilds it from a tensor list (safetensors/src/tensor.rs ``prepare``: tensors sorted by dtype,
  descending, then by name; ``serde_json`` compact; ``next_multiple_of(8)`` padding).

The tensor lists come from memcal itself (its parameter layout and the per-module layouts of
estimator/quant/formats.toml), so a published size checks memcal's shapes and dtypes to the byte.
memcal prices what transformers holds once loaded; where the file stores more or less than that, the
difference is asserted exactly, with the library line that makes it:

* AutoGPTQ until 2024-03-25 (commit 82070a1, PR #602, after its last release 0.7.1) built every
  QuantLinear with ``bias=True`` (auto_gptq/modeling/_utils.py ``make_quant``), so its checkpoints store
  a zero fp16 bias [out] per quantized Linear even for bias-free models; transformers' loader (optimum/gptq/quantizer.py
  ``_replace_by_quant_layers``: ``bias = layer.bias is not None``) never creates it, so it is not loaded.
  AutoGPTQ also writes its own ``__metadata__`` (auto_gptq/modeling/_base.py ``save_quantized``).
* gpt-oss stores its expert biases in bf16; transformers' ``Mxfp4GptOssExperts`` declares them fp32
  (integrations/mxfp4.py) and the loader casts to the parameter's dtype (core_model_loading.py: a
  parameter the quantizer does not quantize keeps ``empty_param.dtype``; quantizer_mxfp4.py
  ``param_needs_quantization`` is False for ``*_proj_bias``), so memcal's fp32 bias is 2 bytes an element
  over the file.

Configs: the base models' config.json from the catalogue (the TheBloke checkpoints below are of these
architectures; the exact byte count also pins vocab_size) plus each repo's quantization_config.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest

from estimator import Workload, quant
from estimator.catalogue import entries
from estimator.formulas import memcal
from estimator.params import parameter_layout
from estimator.quant import formats, price
from estimator.spec import spec_from_dict

# TheBloke's AWQ checkpoints (AutoAWQ GEMM): quant_config.json {"zero_point": true, "q_group_size": 128,
# "w_bit": 4, "version": "GEMM"}, added to config.json as below ("Update for Transformers AWQ support",
# e.g. https://huggingface.co/TheBloke/MAmmoTH-7B-AWQ/commit/025d9ccc2b3c26ed0322c55507c66bb1fba9216d)
AWQ = {"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4, "version": "gemm"}


def gptq(group_size: int) -> dict:
    """TheBloke's GPTQ quantization_config (AutoGPTQ's quantize_config.json, copied into config.json), as in
    https://huggingface.co/dganochenko/Llama-2-7B-GPTQ/blob/3125368a5bc3a1e822b553a4a3fac8da7734be69/config.json
    (a duplicate of TheBloke/Llama-2-7B-GPTQ); the main branches below are 4-bit, act-order (desc_act)."""
    return {"bits": 4, "group_size": group_size, "damp_percent": 0.1, "desc_act": True, "sym": True,
            "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model",
            "quant_method": "gptq"}


@dataclass(frozen=True)
class Published:
    """One published checkpoint: its repo, the base architecture's catalogue config and its
    quantization_config, the exact bytes published, where, and what they count."""

    repo: str
    base: str
    quantization_config: dict
    published: int
    source: str
    kind: str = "file"                      # "file": one model.safetensors; "total_size": the index's tensor bytes
    metadata: dict = field(default_factory=lambda: {"format": "pt"})   # the file's __metadata__
    autogptq_bias: bool = False             # AutoGPTQ <= 0.7.1: a zero fp16 bias per quantized Linear


def autogptq_metadata(group_size: int) -> dict:
    # auto_gptq/modeling/_base.py save_quantized (AutoGPTQ 0.4, TheBloke's 2023 uploads); the values'
    # lengths only matter up to the header's 8-byte padding
    return {"format": "pt", "auto_gptq_version": "0.4.2", "gptq_bits": "4", "gptq_group_size": str(group_size),
            "gptq_desc_act": "True", "gptq_damp_percent": "0.1"}


PUBLISHED = [
    # --- AWQ (GEMM, 4-bit, group 128): single model.safetensors, LFS pointer size on the upload commit ---
    Published("TheBloke/Llama-2-7B-AWQ", "meta-llama/Llama-2-7b-hf", AWQ, 3_889_391_512,
              "https://huggingface.co/TheBloke/Llama-2-7B-AWQ/commit/755f5c3e930244350ecab2e026e32246e8722bc5"),
    Published("TheBloke/Llama-2-7B-Chat-AWQ", "meta-llama/Llama-2-7b-hf", AWQ, 3_889_391_512,
              "https://huggingface.co/TheBloke/Llama-2-7B-Chat-AWQ/commit/2d777decf8333d933c8249a7bb6ee2df9c191619"),
    Published("TheBloke/Llama-2-13B-AWQ", "meta-llama/Llama-2-13b-hf", AWQ, 7_247_987_312,
              "https://huggingface.co/TheBloke/Llama-2-13B-AWQ/commit/816a339a5cdc289642b0582569f6db82aa5e2239"),
    Published("TheBloke/Llama-2-13B-chat-AWQ", "meta-llama/Llama-2-13b-hf", AWQ, 7_247_987_312,
              "https://huggingface.co/TheBloke/Llama-2-13B-chat-AWQ/commit/7597b3e5ab2f92bb31f48aca040eab167e875ca3"),
    # a Mistral-7B fine-tune (GQA: k/v 1024 wide); quant_config.json at
    # https://huggingface.co/TheBloke/Marcoroni-7B-v3-AWQ/blob/f75451723a5378eae5504f0bd5edd9dea231b307/quant_config.json
    Published("TheBloke/Marcoroni-7B-v3-AWQ", "mistralai/Mistral-7B-v0.1", AWQ, 4_150_880_232,
              "https://huggingface.co/TheBloke/Marcoroni-7B-v3-AWQ/commit/f75451723a5378eae5504f0bd5edd9dea231b307"),
    # --- GPTQ (AutoGPTQ, main branch): Llama-2 fine-tunes of the base architectures ---
    Published("TheBloke/Airoboros-L2-7B-2.1-GPTQ", "meta-llama/Llama-2-7b-hf", gptq(128), 3_896_714_728,
              "https://huggingface.co/TheBloke/Airoboros-L2-7B-2.1-GPTQ/commit/9f71b0c2a303b02558effb7c4cc3fda66059cc3c",
              metadata=autogptq_metadata(128), autogptq_bias=True),
    Published("TheBloke/Kimiko-v2-13B-GPTQ", "meta-llama/Llama-2-13b-hf", gptq(128), 7_259_435_192,
              "https://huggingface.co/TheBloke/Kimiko-v2-13B-GPTQ/commit/b72bd9466bc9b94a63696d68f3b96d6c3fe21cbe",
              metadata=autogptq_metadata(128), autogptq_bias=True),
    # 70B main branch: no groups (group_size -1, one scale row per column), act-order
    Published("TheBloke/Airoboros-L2-70B-2.1-Creative-GPTQ", "meta-llama/Llama-2-70b-hf", gptq(-1), 35_332_203_544,
              "https://huggingface.co/TheBloke/Airoboros-L2-70B-2.1-Creative-GPTQ/commit/167482f170bbba0783a8c165f933b94c9d335007",
              metadata=autogptq_metadata(-1), autogptq_bias=True),
]

# openai/gpt-oss-20b model.safetensors.index.json: {"metadata": {"total_size": 13761264768}, ...}, a verbatim
# copy beside its config.json in https://github.com/MaximeRivest/moereport/blob/c2bc6eb2bd6ef0afb3700afa02c09f0bb6274a54/tmp.md
# (the Hub file: https://huggingface.co/openai/gpt-oss-20b/blob/main/model.safetensors.index.json)
GPT_OSS_20B_TOTAL_SIZE = 13_761_264_768

DTYPE = {4: "I32", 2: "F16", 1: "U8"}     # formats.toml widths of the GPTQ/AWQ tensors, as safetensors names them
ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]  # Dtype enum order


def spec_of(fact: Published):
    config = json.loads(json.dumps(entries()[fact.base]["config"]))
    config["quantization_config"] = fact.quantization_config
    return spec_from_dict(config, fact.repo)


def loaded_bytes(spec) -> int:
    """memcal's price of the parameters as transformers holds them (fp16, on a GPU)."""
    return memcal.parameter_bytes(spec, Workload(dtype="fp16"), "cuda")


def stored_tensors(spec, autogptq_bias: bool = False) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) of every tensor an fp16 checkpoint of `spec` stores, from memcal's
    parameter layout and formats.toml (rotary buffers are not persistent: never saved)."""
    layout = parameter_layout(spec)
    scheme = quant.scheme_for(spec, Workload(dtype="fp16"))
    skips = tuple(scheme.skip or ()) + (price.default_skips(layout) if scheme.default_skips else ())
    out = []
    for m in price.modules(layout):
        in_f, out_f, bias, _ = price._per_module(m.group)
        conv = price._converted(scheme, m, skips, spec, "cuda")
        if conv is None:
            out.append((f"{m.name}.weight", "F16", (out_f, in_f)))
            out += [(f"{m.name}.bias", "F16", (out_f,))] if bias else []
            continue
        for name, size, shape in formats.module_tensors(conv[0], in_f, out_f, bias, conv[1], 2):
            out.append((f"{m.name}.{name}", DTYPE[size], shape))
        if autogptq_bias and not bias:
            out.append((f"{m.name}.bias", "F16", (out_f,)))
    for emb in layout.embeddings:
        out.append((f"{emb.path}.weight", "F16", (emb.rows, emb.dim)))
    for t in layout.tensors:
        if t.kind == "buffer":
            continue
        for path in ([t.path.format(i=i) for i in t.layers] if t.layers is not None else [t.path]):
            out.append((f"{path}.weight" if t.kind == "norm" else path, "F16", t.shape))
    return out


def tensor_bytes(tensors) -> int:
    return sum({"I32": 4, "F16": 2, "U8": 1}[d] * math.prod(s) for _, d, s in tensors)


def safetensors_bytes(tensors, metadata: dict | None) -> int:
    """The size of the .safetensors file that safetensors' `serialize` writes for these tensors."""
    entries_, offset = [], 0
    if metadata is not None:
        entries_.append('"__metadata__":' + json.dumps(metadata, separators=(",", ":")))
    for name, dtype, shape in sorted(tensors, key=lambda t: (-ORDER.index(t[1]), t[0])):
        size = {"I32": 4, "F16": 2, "U8": 1}[dtype] * math.prod(shape)
        entries_.append(f'{json.dumps(name)}:{{"dtype":"{dtype}","shape":[{",".join(map(str, shape))}],'
                        f'"data_offsets":[{offset},{offset + size}]}}')
        offset += size
    header = len("{" + ",".join(entries_) + "}")
    return 8 + -(-header // 8) * 8 + offset


@pytest.mark.parametrize("fact", PUBLISHED, ids=lambda f: f.repo)
def test_published_single_file_checkpoints_to_the_byte(fact):
    s = spec_of(fact)
    tensors = stored_tensors(s, fact.autogptq_bias)
    # the file memcal's layout describes is the published file, header included, to the byte
    assert safetensors_bytes(tensors, fact.metadata) == fact.published
    # and memcal's loaded price is exactly its tensors, less what the loader does not create
    extra = sum(2 * t[2][0] for t in tensors if t[0].endswith(".bias")) if fact.autogptq_bias else 0
    assert loaded_bytes(s) == tensor_bytes(tensors) - extra
    header = fact.published - tensor_bytes(tensors)
    assert 0 < header < 130 * len(tensors)           # ~115 header bytes a tensor


def test_published_numbers_as_percentages():
    """The comparison the issue asks for, printed by -v -s: memcal (loaded) vs the published bytes."""
    rows = []
    for fact in PUBLISHED:
        mine = loaded_bytes(spec_of(fact))
        rows.append((fact.repo, mine, fact.published, 100 * (mine - fact.published) / fact.published))
    for repo, mine, pub, pct in rows:
        print(f"{repo:50s} memcal {mine:>14,} published {pub:>14,} ({pct:+.4f} %)")
    # AWQ: only the file header (~0.003 %); AutoGPTQ: the header and its never-loaded zero biases
    assert all(-0.1 < pct < 0 for _, _, _, pct in rows)


def test_gpt_oss_20b_index_total_size():
    s = spec_from_dict(json.loads(json.dumps(entries()["openai/gpt-oss-20b"]["config"])), "openai/gpt-oss-20b")
    mine = memcal.parameter_bytes(s, Workload(dtype="bf16"), "cuda")
    layout = parameter_layout(s)
    expert_bias = sum(g.out_features * g.count for g in layout.linears if g.kind == "experts" and g.bias)
    assert expert_bias == 24 * 32 * (5760 + 2880)
    # the file holds the expert biases in bf16; Mxfp4GptOssExperts loads them into fp32 parameters
    # (everything else to the byte: FP4 blocks, E8M0 scales, bf16 attention, router, embeddings, sinks, norms)
    assert mine - GPT_OSS_20B_TOTAL_SIZE == 2 * expert_bias == 13_271_040          # +0.096 %


def test_the_byte_match_pins_the_layout():
    """The exact match is not loose: one vocabulary row, one group size or a missing g_idx moves it."""
    fact = PUBLISHED[2]                                   # Llama-2-13B-AWQ
    s = spec_of(fact)
    assert safetensors_bytes(stored_tensors(s), fact.metadata) == fact.published
    bigger = json.loads(json.dumps(entries()[fact.base]["config"]))
    bigger.update(vocab_size=32001, quantization_config=AWQ)    # WizardCoder-Python-13B-V1.0-AWQ: 7_248_007_792
    assert safetensors_bytes(stored_tensors(spec_from_dict(bigger, "x")), fact.metadata) == 7_248_007_792
    g64 = spec_of(Published(fact.repo, fact.base, {**AWQ, "group_size": 64}, 0, ""))
    assert safetensors_bytes(stored_tensors(g64), fact.metadata) != fact.published
    gptq13 = PUBLISHED[6]
    no_bias = safetensors_bytes(stored_tensors(spec_of(gptq13)), gptq13.metadata)
    biases = 40 * 7                                  # 40 layers x 7 Linears, 53,248 outputs a layer, fp16
    assert 0 < gptq13.published - no_bias - 40 * 53_248 * 2 < 120 * biases   # + their header entries
