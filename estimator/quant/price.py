"""Weight bytes of a model under a `Scheme`: which modules the integration converts, what each holds.

Module selection follows transformers 5.23 exactly where it decides: quantizers/base.py
get_modules_to_not_convert (default skips: the output embeddings, tied weights and the module of the
last parameter, added when the method's own list is None or the quantizer asks for them),
quantizers/quantizers_utils.py should_convert_module (a pattern skips a module from the start up to
a module boundary, as a regex with that boundary, or as a suffix), and each method's replace
function (which module classes it swaps). Everything it leaves alone stays in the compute dtype.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from ..params import LinearGroup, ParamLayout, parameter_layout
from . import compressed, formats, gguf
from .scheme import Scheme

_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


def should_convert(name: str, patterns) -> bool:
    """transformers' should_convert_module: False when any pattern matches `name`."""
    if not patterns:
        return True
    return not any(re.match(rf"(?:{p}){_BOUNDARY}", name) or name.endswith(p) for p in patterns)


@dataclass(frozen=True)
class Module:
    """One module of the model: its full name, the layout group it belongs to, its class kind."""

    name: str
    group: LinearGroup
    head: bool = False

    @property
    def classes(self) -> tuple[str, ...]:
        kind = self.group.kind
        return ("Linear",) if kind == "linear" else ("Conv1D",) if kind == "conv1d" else (kind,)


def modules(layout: ParamLayout) -> Iterator[Module]:
    """Every linear-like module (per layer), the lm_head last. Fused experts name their module
    (``…mlp.experts``), as the replace functions see it."""
    for g in layout.linears:
        path = g.path.rsplit(".", 1)[0] if g.kind == "experts" else g.path
        for i in g.layers if g.layers is not None else (None,):
            yield Module(path.format(i=i) if i is not None else path, g)
    if layout.lm_head is not None:
        yield Module(layout.lm_head.path or "lm_head", layout.lm_head, head=True)


def default_skips(layout: ParamLayout) -> tuple[str, ...]:
    """get_keys_to_not_convert: the output embeddings (lm_head) — tied weights and the last parameter's
    module are an embedding or a norm in every family of the table, never a converted class."""
    return ("lm_head",)


def _per_module(group: LinearGroup) -> tuple[int, int, bool, int]:
    """(in, out, bias, count) of one module of the group: an experts module holds `experts` slices."""
    per = group.experts if group.kind == "experts" else 1
    return group.in_features, group.out_features, group.bias, per


def _dense(group: LinearGroup, e: int) -> int:
    in_f, out_f, bias, per = _per_module(group)
    return (in_f * out_f + (out_f if bias else 0)) * per * e


def _converted(scheme: Scheme, m: Module, skips, spec, device) -> tuple[str, dict] | None:
    """(format name, options) when the method converts module m, else None."""
    method, o, kind = scheme.method, scheme.options, m.group.kind
    if method == "bitsandbytes" and kind in ("linear", "conv1d") and should_convert(m.name, skips):
        if o["bits"] == 8:
            return "bnb_int8", {}
        return ("bnb_4bit_cpu" if device == "cpu" else "bnb_4bit"), dict(o)
    if method == "gptq" and kind in ("linear", "conv1d") and m.group.layers is not None and not m.head:
        keep = o.get("keep")
        return ("gptq", dict(o)) if not keep or any(m.name.endswith(k) for k in keep) else None
    if method == "awq" and kind == "linear" and should_convert(m.name, skips):
        return o["layout"], dict(o)
    if method == "fp8" and kind in ("linear", "experts") and should_convert(m.name, skips):
        return ("fp8_experts" if kind == "experts" else "fp8"), {**o, "gate_up": m.group.name.endswith("gate_up_proj")}
    if method == "mxfp4" and kind == "experts" and spec.dim("mxfp4_experts", False) and should_convert(m.name, skips):
        return "mxfp4_experts", {}
    if method == "torchao" and kind == "linear" and o.get("layout") and should_convert(m.name, skips):
        return o["layout"], dict(o)
    if method == "hqq" and kind == "linear" and m.name.rsplit(".", 1)[-1] not in (scheme.skip or ()):
        return "hqq", dict(o)
    if method == "compressed-tensors":
        group = compressed.group_for(m.name, m.classes, o["groups"], scheme.skip)
        return None if group is None else ("compressed-tensors", group)
    return None


def dequantized(scheme: Scheme, device: str | None) -> str | None:
    """Why transformers loads this checkpoint dense (dequantized to the model's dtype), or None."""
    if scheme.options.get("dequantize"):
        return f"{scheme.method} dequantize=true: transformers dequantizes the weights on load"
    if scheme.method == "fp8" and device in ("cpu", "mps"):
        return ("fine-grained FP8 on a CPU: transformers dequantizes the checkpoint to the model's dtype "
                "(quantizer_finegrained_fp8.validate_environment: no GPU/XPU)")
    if scheme.method == "mxfp4" and device in ("cpu", "mps"):
        return ("MXFP4 on a CPU without use_kernels=True: transformers dequantizes the experts to bf16 "
                "(quantizer_mxfp4: MXFP4 on CPU needs use_kernels)")
    return None


def _ct_bytes(group: dict, m: Module, e: int, loaded: bool) -> int:
    in_f, out_f, bias, per = _per_module(m.group)
    rows, cols = compressed.scale_shape(group, in_f, out_f)
    scale = formats.DTYPE_BYTES.get({"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(
        str(group.get("scale_dtype")).removeprefix("torch."), ""), e)
    opts = {"bits": group["bits"], "symmetric": group["symmetric"], "scale": scale, "scale_rows": rows,
            "scale_cols": cols, "input_static": group["input_static"], "packed": group["format"] == "pack-quantized",
            "wbytes": 1}
    name = "ct_decompressed" if not loaded else "ct_pack" if opts["packed"] else "ct_plain"
    return formats.module_bytes(name, in_f, out_f, bias, opts, e) * per


def parameter_bytes(spec, scheme: Scheme, compute_bytes: int, dense_bytes: int, device: str | None = None,
                    loaded: bool = False) -> int:
    """Bytes of the parameters (quantization state included) under `scheme`. `dense_bytes` is the
    formula's own price of the dense model; converted modules replace their dense share. For
    compressed-tensors, `loaded=True` gives the compressed checkpoint as loaded (before the first
    forward decompresses it)."""
    layout = parameter_layout(spec)
    if scheme.method == "gguf":
        return gguf_bytes(spec, scheme.options["ftype"])
    if scheme.method == "dense" or dequantized(scheme, device):
        return dense_bytes
    skips = tuple(scheme.skip or ()) + (default_skips(layout) if scheme.default_skips else ())
    total = dense_bytes
    for m in modules(layout):
        conv = _converted(scheme, m, skips, spec, device)
        if conv is None:
            continue
        total -= _dense(m.group, compute_bytes)
        if conv[0] == "compressed-tensors":
            total += _ct_bytes(conv[1], m, compute_bytes, loaded)
            continue
        in_f, out_f, bias, per = _per_module(m.group)
        total += formats.module_bytes(conv[0], in_f, out_f, bias, conv[1], compute_bytes) * per
    return total + _extra(spec, scheme, layout, compute_bytes)


def _extra(spec, scheme: Scheme, layout: ParamLayout, e: int) -> int:
    """AWQ's ScaledActivation (transformers integrations/awq.py AWQ_SCALES_MAPPINGS): a scale per
    intermediate channel after the activation of GPT-BigCode-like MLPs, one per layer."""
    if scheme.method != "awq" or spec.family not in ("gpt_bigcode", "starcoder2", "falcon", "gpt_neox", "mpt",
                                                      "gptj", "bloom"):
        return 0
    fc = next((g for g in layout.linears if g.name.endswith(("c_fc", "dense_h_to_4h", "up_proj", "fc_in"))), None)
    return fc.out_features * fc.count * e if fc is not None else 0


def converted_count(spec, scheme: Scheme, device: str | None = None) -> tuple[int, int]:
    """(converted modules, all linear-like modules): for notes."""
    layout = parameter_layout(spec)
    skips = tuple(scheme.skip or ()) + (default_skips(layout) if scheme.default_skips else ())
    mods = list(modules(layout))
    return sum(_converted(scheme, m, skips, spec, device) is not None for m in mods), len(mods)


# --- GGUF ---------------------------------------------------------------------------------------
def _category(m: Module) -> str:
    if m.head:
        return "output"
    name = m.group.name
    for suffix, cat in sorted(gguf.CATEGORY.items(), key=lambda kv: -len(kv[0])):
        if name == suffix or name.endswith("." + suffix) or name.endswith(suffix):
            return cat
    return "router" if m.group.kind == "router" else "other"


def gguf_tensors(spec, ftype: str) -> list[tuple[str, str, int, int]]:
    """(tensor, ggml type, bytes, how many tensors) of every tensor a llama.cpp `ftype` file of this model holds, by
    llama.cpp's default mixture (no imatrix, no overrides)."""
    layout = parameter_layout(spec)
    model = gguf.Model(n_layer=spec.num_layers, n_gqa=spec.num_heads // spec.num_kv_heads,
                       n_expert=spec.num_experts, tied=layout.lm_head is None, is_70b=spec.num_layers == 80)
    mods = list(modules(layout))
    wv = [m for m in mods if _category(m) in ("attn_v", "attn_qkv")]
    out = []
    for m in mods:
        in_f, out_f, bias, per = _per_module(m.group)
        cat = _category(m)
        if cat in ("router", "other"):
            kind = "F16"
        else:
            layer = int(re.search(r"\.(\d+)\.", m.name + ".").group(1)) if m.group.layers is not None else 0
            kind = gguf.tensor_type(ftype, cat, in_f, layer, wv.index(m) if m in wv else 0, len(wv), model)
        out.append((m.name, kind, gguf.row_bytes(kind, in_f) * out_f * per, 1))
        if bias:
            out.append((m.name + ".bias", "F32", 4 * out_f * per, 1))
    for emb in layout.embeddings:
        token = emb.name.endswith(("embed_tokens", "wte", "word_embeddings"))
        kind = gguf.tensor_type(ftype, "token_embd", emb.dim, 0, 0, len(wv), model) if token else "F16"
        out.append((emb.path or emb.name, kind, gguf.row_bytes(kind, emb.dim) * emb.rows, 1))
    for t in layout.tensors:
        if t.kind != "buffer":
            out.append((t.path or t.name, "F32", 4 * t.elements, t.count * (2 if t.bias else 1)))
    if _llama3_rope(spec):
        out.append(("rope_freqs", "F32", 4 * (spec.head_dim // 2), 1))
    return out


def _llama3_rope(spec) -> bool:
    """convert_hf_to_gguf writes rope_freqs (head_dim / 2 fp32) for Llama 3.1's rope scaling."""
    rope = spec.config.get("rope_scaling") or spec.config.get("rope_parameters") or {}
    return isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "llama3"


def gguf_bytes(spec, ftype: str) -> int:
    return sum(b for _, _, b, _ in gguf_tensors(spec, ftype))
