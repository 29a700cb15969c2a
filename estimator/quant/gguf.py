"""GGUF: exact bytes per ggml type, llama.cpp's default mixture for a file type (Q4_K_M…), and the
exact total of a .gguf file's tensor table.

Sources (llama.cpp, src/llama-quant.cpp): `llama_ftype_get_default_type` (a file type's base ggml
type), `llama_tensor_get_type_impl` (the mixture: which tensors get more bits), `use_more_bits`,
`tensor_type_fallback` (a row length the block size does not divide), `tensor_allows_quantization`
(1-D tensors, norms and the MoE router are never quantized); ggml's block sizes and bytes per block:
ggml/src/ggml.c type_traits, also gguf-py gguf/constants.py GGML_QUANT_SIZES (tests check this table
against it). Tensors llama.cpp does not quantize keep their type in the source GGUF: norms and
biases F32 (convert_hf_to_gguf writes 1-D tensors in F32), routers and position tables F16 (assumed).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import MemcalError

# ggml type -> (elements per block, bytes per block)
GGML_TYPES = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
    "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 40), "Q2_K": (256, 84), "Q3_K": (256, 110),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210), "Q8_K": (256, 292), "IQ2_XXS": (256, 66),
    "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98), "IQ1_S": (256, 50), "IQ4_NL": (32, 18), "IQ3_S": (256, 110),
    "IQ2_S": (256, 82), "IQ4_XS": (256, 136), "I8": (1, 1), "I16": (1, 2), "I32": (1, 4), "I64": (1, 8),
    "F64": (1, 8), "IQ1_M": (256, 56), "TQ1_0": (256, 54), "TQ2_0": (256, 66), "MXFP4": (32, 17),
}
# llama_ftype_get_default_type, for the file types memcal's --weights accepts
DEFAULT_TYPE = {
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "Q2_K": "Q2_K",
    "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# HF module name suffix -> llama.cpp tensor category (tensor_get_category, by the GGUF name it converts to)
CATEGORY = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output", "qkv_proj": "attn_qkv",
    "c_attn": "attn_qkv", "attn.c_proj": "attn_output", "dense": "attn_output", "gate_proj": "ffn_gate",
    "up_proj": "ffn_up", "gate_up_proj": "ffn_up", "down_proj": "ffn_down", "c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def row_bytes(ggml_type: str, columns: int) -> int:
    """Bytes of one row of `columns` elements (ggml_row_size)."""
    block, size = GGML_TYPES[ggml_type]
    if columns % block:
        raise MemcalError(f"a row of {columns} elements does not split into {ggml_type} blocks of {block}")
    return columns // block * size


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(new: str, columns: int) -> str:
    block = GGML_TYPES[new][0]
    if columns % block == 0:
        return new
    new = _FALLBACK.get(new, "F16")
    return new if columns % GGML_TYPES[new][0] == 0 else "F16"


@dataclass(frozen=True)
class Model:
    """What the mixture rules read of a model (llama_hparams)."""

    n_layer: int
    n_gqa: int
    n_expert: int
    tied: bool
    is_70b: bool


def _output_type(ftype: str, default: str, columns: int) -> str:
    if columns % GGML_TYPES[default][0]:
        return "Q8_0"
    return "Q6_K" if default != "Q8_0" else "Q8_0"


def _attn_v(ftype: str, new: str, i: int, n: int, m: Model) -> str:
    rules = {"Q2_K": "Q4_K" if m.n_gqa >= 4 else "Q3_K", "Q3_K_M": "Q5_K" if i < 2 else "Q4_K", "Q3_K_L": "Q5_K"}
    if ftype in rules:
        new = rules[ftype]
    elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        new = "Q6_K"
    elif ftype == "Q4_K_S" and i < 4:
        new = "Q5_K"
    if m.is_70b and new in ("Q3_K", "Q4_K"):
        new = "Q5_K"
    return "Q8_0" if m.n_expert == 8 else new


def _ffn_down(ftype: str, new: str, i: int, n: int) -> str:
    if ftype == "Q2_K":
        return "Q3_K"
    if ftype == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"  # (Q3_K only for Falcon)
    if ftype == "Q3_K_L":
        return "Q5_K"
    if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        return "Q6_K"
    if ftype == "Q4_K_S" and i < n // 8:
        return "Q5_K"
    return new


def _attn_output(ftype: str, new: str, m: Model) -> str:
    if m.n_expert == 8:
        return "Q5_K" if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M") else new
    return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, new)


def tensor_type(ftype: str, category: str, columns: int, layer: int, wv_index: int, wv_count: int, m: Model) -> str:
    """The ggml type llama.cpp's default mixture gives one quantizable tensor (llama_tensor_get_type)."""
    default = DEFAULT_TYPE[ftype]
    new = default
    if category == "output" or (m.tied and category == "token_embd"):
        new = _output_type(ftype, default, columns)
    elif category in ("attn_v", "attn_qkv"):
        new = _attn_v(ftype, default, wv_index, wv_count, m)
    elif category == "attn_k" and m.n_expert == 8:
        new = "Q8_0"
    elif category == "ffn_down":
        new = _ffn_down(ftype, default, layer, m.n_layer)
    elif category == "attn_output":
        new = _attn_output(ftype, default, m)
    return _fallback(new, columns)


def read_file(path) -> dict:
    """The tensor table of a .gguf file (the `gguf` package reads it; no tensor data is loaded):
    total bytes, tensor count and bytes by ggml type, and the file type it records."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise MemcalError("reading a .gguf file needs the gguf package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise MemcalError(f"{path}: not a readable GGUF file ({exc})") from None
    by_type: dict[str, list[int]] = {}
    for t in reader.tensors:
        row = by_type.setdefault(t.tensor_type.name, [0, 0])
        row[0] += 1
        row[1] += int(t.n_bytes)
    field = reader.fields.get("general.file_type")
    ftype = int(field.parts[field.data[0]][0]) if field is not None else None
    return {"total_bytes": sum(b for _, b in by_type.values()), "tensors": sum(c for c, _ in by_type.values()),
            "by_type": {k: {"tensors": c, "bytes": b} for k, (c, b) in sorted(by_type.items())}, "file_type": ftype}
