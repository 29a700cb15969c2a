"""A checkpoint's quantization, read from its config.json's ``quantization_config`` or asked for with
``--weights``: one immutable `Scheme` per estimate, which says what is priced and what was assumed.

Readers follow the config classes of transformers 5.23 (utils/quantization_config.py: their
defaults, aliases and legacy keys); options memcal does not model become warnings, never silence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..workload import BNB_BITS, GGUF_TYPES

# torch dtype names in configs -> memcal's names
_DTYPES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
           "uint8": "uint8", "int8": "int8", "float8_e4m3fn": "fp8", "torch.float32": "fp32",
           "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.uint8": "uint8"}
_STORAGE_BYTES = {"uint8": 1, "int8": 1, "fp16": 2, "bf16": 2, "fp32": 4}
METHODS = ("dense", "bitsandbytes", "gptq", "awq", "fp8", "compressed-tensors", "mxfp4", "torchao", "hqq", "gguf")
# --weights values that name a method: its defaults, or the config's options when it has that method
METHOD_FLAGS = {"gptq": "gptq", "awq": "awq", "fp8": "fp8", "mxfp4": "mxfp4"}


@dataclass(frozen=True)
class Scheme:
    """What a prediction prices the weights as. ``origin``: quantization_config, --weights or none."""

    method: str
    label: str
    origin: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] | None = None   # the method's own skip list (modules_to_not_convert, ignore, …)
    default_skips: bool = True            # transformers adds lm_head / tied / last module (get_keys_to_not_convert)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"method": self.method, "label": self.label, "origin": self.origin, "options": dict(self.options),
                "skip": list(self.skip) if self.skip is not None else None, "notes": list(self.notes),
                "warnings": list(self.warnings)}


def _dtype(value: Any, default: str) -> str:
    return _DTYPES.get(str(value).removeprefix("torch.").lower(), default) if value is not None else default


def _skip(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else (str(value),)


def _bnb(qc: Mapping, warn: list[str]) -> Scheme:
    eight = bool(qc.get("load_in_8bit", qc.get("_load_in_8bit", False)))
    skip = _skip(qc.get("llm_int8_skip_modules"))
    if qc.get("llm_int8_has_fp16_weight"):
        warn.append("bitsandbytes llm_int8_has_fp16_weight keeps fp16 weights beside int8 ones: not modelled, "
                    "priced as plain LLM.int8")
    if eight:
        return Scheme("bitsandbytes", "bitsandbytes LLM.int8 (int8 CB + fp32 SCB per row)", "quantization_config",
                      MappingProxyType({"bits": 8, "threshold": float(qc.get("llm_int8_threshold", 6.0))}), skip,
                      skip is None, warnings=tuple(warn))
    quant_type = str(qc.get("bnb_4bit_quant_type", "fp4")).lower()
    double = bool(qc.get("bnb_4bit_use_double_quant", False))
    storage = _dtype(qc.get("bnb_4bit_quant_storage"), "uint8")
    compute = _dtype(qc.get("bnb_4bit_compute_dtype"), "fp32")  # BitsAndBytesConfig: None -> torch.float32
    opts = {"bits": 4, "quant_type": quant_type, "double_quant": double, "blocksize": 64,
            "storage": _STORAGE_BYTES.get(storage, 1), "compute_dtype": compute}
    label = f"bitsandbytes {quant_type}{' + double quant' if double else ''} (blocksize 64, compute {compute})"
    return Scheme("bitsandbytes", label, "quantization_config", MappingProxyType(opts), skip, skip is None,
                  warnings=tuple(warn))


def _gptq(qc: Mapping, warn: list[str]) -> Scheme:
    bits, group = int(qc.get("bits", 4)), int(qc.get("group_size", 128))
    if bits not in (2, 3, 4, 8):
        warn.append(f"gptq bits={bits} is not one of 2/3/4/8: priced with the same packing rule")
    if qc.get("dynamic"):
        warn.append("gptq `dynamic` per-module overrides are not modelled: every module priced with the top-level bits")
    if qc.get("lm_head"):
        warn.append("gptq lm_head quantization is not modelled: lm_head priced in the compute dtype")
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        warn.append(f"gptq format {fmt!r} is not modelled: priced as the gptq (v1) layout")
    keep = qc.get("modules_in_block_to_quantize")
    opts = {"bits": bits, "group_size": group, "desc_act": bool(qc.get("desc_act", False)),
            "sym": bool(qc.get("sym", True)),
            "keep": tuple(n for group_ in keep for n in group_) if keep else None}
    g = "per-column" if group <= 0 else f"group {group}"
    label = f"gptq {bits}-bit, {g}{', desc_act' if opts['desc_act'] else ''} (qweight/qzeros int32, fp16 scales, g_idx)"
    return Scheme("gptq", label, "quantization_config", MappingProxyType(opts), None, False, warnings=tuple(warn))


def _awq(qc: Mapping, warn: list[str]) -> Scheme:
    version = str(qc.get("version") or qc.get("format") or "gemm").lower()
    bits, group = int(qc.get("bits", qc.get("w_bit", 4))), int(qc.get("group_size", qc.get("q_group_size", 128)))
    layout = {"gemm": "awq_gemm", "gemv": "awq_gemv", "gemv_fast": "awq_gemv_fast"}.get(version)
    if layout is None:
        warn.append(f"awq version {version!r} is not modelled: priced as the gemm layout")
        layout = "awq_gemm"
    if bits != 4:
        warn.append(f"awq bits={bits}: the AWQ kernels pack 4-bit weights only; priced with 32 // bits per int32")
    opts = {"bits": bits, "group_size": group, "zero_point": bool(qc.get("zero_point", True)), "layout": layout}
    label = f"awq {bits}-bit {version}, group {group} (int32 qweight/qzeros, fp16 scales)"
    return Scheme("awq", label, "quantization_config", MappingProxyType(opts),
                  _skip(qc.get("modules_to_not_convert")), True, warnings=tuple(warn))


def _fp8(qc: Mapping, warn: list[str]) -> Scheme:
    block = qc.get("weight_block_size", (128, 128))
    if qc.get("modules_to_convert"):
        warn.append("fp8 modules_to_convert (FP8 embeddings) is not modelled: embeddings priced in the compute dtype")
    if qc.get("expert_dtype", "fp8") != "fp8":
        warn.append("fp8 expert_dtype fp4 is not modelled: experts priced as fp8")
    skip = _skip(qc.get("modules_to_not_convert", qc.get("ignored_layers")))
    opts = {"block_out": int(block[0]) if block else 0, "block_in": int(block[1]) if block else 0,
            "ue8m0": qc.get("scale_fmt", "float") == "ue8m0", "static": qc.get("activation_scheme") == "static",
            "dequantize": bool(qc.get("dequantize", False))}
    blocks = f"{opts['block_out']}x{opts['block_in']} blocks" if block else "per-tensor scale"
    label = f"fp8 e4m3 weights, {'ue8m0' if opts['ue8m0'] else 'fp32'} weight_scale_inv per {blocks}"
    return Scheme("fp8", label, "quantization_config", MappingProxyType(opts), skip, skip is None,
                  warnings=tuple(warn))


def _mxfp4(qc: Mapping, warn: list[str]) -> Scheme:
    skip = _skip(qc.get("modules_to_not_convert"))
    return Scheme("mxfp4", "mxfp4 experts (FP4 blocks + a uint8 E8M0 scale per 32 weights)", "quantization_config",
                  MappingProxyType({"dequantize": bool(qc.get("dequantize", False))}), skip, skip is None,
                  warnings=tuple(warn))


def _compressed(qc: Mapping, warn: list[str]) -> Scheme:
    from .compressed import read_groups
    groups, notes = read_groups(qc, warn)
    if qc.get("kv_cache_scheme"):
        warn.append("compressed-tensors kv_cache_scheme (a quantized KV cache) is not modelled: "
                    "KV priced in --kv-dtype")
    if qc.get("sparsity_config"):
        warn.append("compressed-tensors sparsity_config is not modelled: sparse weights priced dense-quantized")
    kinds = ", ".join(sorted({g["label"] for g in groups})) or "no group"
    return Scheme("compressed-tensors", f"compressed-tensors {kinds}", "quantization_config",
                  MappingProxyType({"groups": tuple(groups), "dequantize": bool(qc.get("dequantize", False))}),
                  _skip(qc.get("ignore")), False, notes=tuple(notes), warnings=tuple(warn))


def _torchao(qc: Mapping, warn: list[str]) -> Scheme:
    kind, data = _torchao_kind(qc.get("quant_type"), qc.get("quant_type_kwargs") or {})
    layout = {"Int8WeightOnlyConfig": "torchao_int8", "int8_weight_only": "torchao_int8",
              "Int8DynamicActivationInt8WeightConfig": "torchao_int8",
              "int8_dynamic_activation_int8_weight": "torchao_int8",
              "Int4WeightOnlyConfig": "torchao_int4", "int4_weight_only": "torchao_int4"}.get(kind)
    if layout is None:
        warn.append(f"torchao quant_type {kind!r} is not modelled: weights priced dense in the compute dtype")
    group = int(data.get("group_size", 128) or 128)
    if layout == "torchao_int4":
        warn.append("torchao int4: the packed layout depends on the kernel (tinygemm, CPU, Marlin); priced as "
                    "plain uint8 nibbles + a scale and zero point per group")
    return Scheme("torchao", f"torchao {kind}", "quantization_config",
                  MappingProxyType({"layout": layout, "group_size": group}), _skip(qc.get("modules_to_not_convert")),
                  True, warnings=tuple(warn))


def _torchao_kind(quant_type: Any, kwargs: Mapping) -> tuple[str, Mapping]:
    if isinstance(quant_type, str):
        return quant_type, kwargs
    if isinstance(quant_type, Mapping):
        entry = quant_type.get("default", quant_type)
        if isinstance(entry, Mapping) and "_type" in entry:
            return str(entry["_type"]), entry.get("_data", {}) or {}
    return str(quant_type), {}


def _hqq(qc: Mapping, warn: list[str]) -> Scheme:
    params = (qc.get("quant_config") or {}).get("weight_quant_params") or qc.get("weight_quant_params") or {}
    if not params:
        warn.append("hqq: per-layer quant_config is not modelled: priced with 4-bit, group 64")
    nbits, group = int(params.get("nbits", 4)), int(params.get("group_size", 64) or 64)
    if nbits not in (1, 2, 4, 8):
        warn.append(f"hqq {nbits}-bit packs into int32 words: priced at one code per byte")
    skip = _skip(qc.get("skip_modules", ["lm_head"]))
    return Scheme("hqq", f"hqq {nbits}-bit, group {group}", "quantization_config",
                  MappingProxyType({"nbits": nbits, "group_size": group}), skip, False, warnings=tuple(warn))


READERS = {"bitsandbytes": _bnb, "gptq": _gptq, "awq": _awq, "fp8": _fp8, "mxfp4": _mxfp4,
           "compressed-tensors": _compressed, "torchao": _torchao, "hqq": _hqq}


def from_config(config: Mapping[str, Any]) -> Scheme | None:
    """The scheme a config.json's quantization_config describes, or None when it has none."""
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping):
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method in ("bitsandbytes", "bnb") or (not method and ("load_in_4bit" in qc or "load_in_8bit" in qc)):
        method = "bitsandbytes"
    reader = READERS.get(method)
    if reader is None:
        return Scheme("dense", f"unknown quant_method {qc.get('quant_method')!r}", "quantization_config", warnings=(
            f"quantization_config quant_method {qc.get('quant_method')!r} is not modelled by memcal: weights priced "
            "dense in the compute dtype (an upper bound for weight-only quantization)",))
    return reader(qc, [])


def from_workload(config: Mapping[str, Any], weights: str) -> Scheme:
    """The scheme for --weights `weights` (Workload.weights) with this config: the config's own
    quantization_config when weights is "none", dense for "dense", the flag's format otherwise."""
    own = from_config(config)
    if weights == "none":
        return own or Scheme("dense", "dense")
    overridden = (f"the checkpoint's quantization_config ({own.method}) is overridden by --weights {weights}",) \
        if own is not None and own.method != "dense" else ()
    if weights == "dense":
        return Scheme("dense", "dense (--weights dense)", "--weights", notes=overridden)
    if weights in BNB_BITS:
        return Scheme("bitsandbytes", f"bitsandbytes {weights} (--weights)", "--weights", notes=overridden)
    if weights in GGUF_TYPES:
        return Scheme("gguf", f"GGUF {weights} (llama.cpp's default mixture)", "--weights",
                      MappingProxyType({"ftype": weights}), notes=overridden)
    if own is not None and own.method == METHOD_FLAGS.get(weights):
        return own
    defaults = {"gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128},
                "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"},
                "fp8": {"quant_method": "fp8", "weight_block_size": [128, 128]},
                "mxfp4": {"quant_method": "mxfp4"}}[weights]
    scheme = READERS[defaults["quant_method"]](defaults, [])
    from dataclasses import replace
    return replace(scheme, origin="--weights", label=f"{scheme.label} (--weights {weights}: the method's defaults)",
                   notes=overridden)
