"""What is being run: batch, lengths, precisions, attention and phase.

A `Workload` is immutable and validates itself when built, so every formula and every probe can
trust it. Names are normalised (``float16`` -> ``fp16``, ``q4_k_m`` -> ``Q4_K_M``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import MemcalError

# Compute dtypes: bytes per element.
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
_DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
}
# KV cache dtypes: the compute dtypes, plus 1-byte caches that only estimates know (004 seed: INT8 KV).
KV_DTYPE_BYTES = {**DTYPE_BYTES, "fp8": 1, "int8": 1}

# GGUF quantization types of the 004 seed's table: (bits per weight, bytes per parameter) as printed.
GGUF_TYPES = {
    "Q2_K": (2.0, 0.25), "Q3_K_S": (3.0, 0.375), "Q3_K_M": (3.0, 0.375), "Q3_K_L": (3.0, 0.375),
    "Q4_0": (4.5, 0.56), "Q4_1": (5.0, 0.625), "Q4_K_S": (4.0, 0.5), "Q4_K_M": (4.0, 0.5),
    "Q5_0": (5.5, 0.69), "Q5_1": (6.0, 0.75), "Q5_K_S": (5.0, 0.625), "Q5_K_M": (5.0, 0.625),
    "Q6_K": (6.0, 0.75), "Q8_0": (8.5, 1.06),
}
# bitsandbytes weight quantizations: nominal bits per weight (scales come on top, see the memcal formula).
BNB_BITS = {"int8": 8, "nf4": 4, "fp4": 4}
# Weight formats named by method (estimator/quant): their nominal bits, for the seeds; "dense" forces the
# dense model over a checkpoint's quantization_config ("none": the checkpoint as published decides).
METHOD_BITS = {"gptq": 4, "awq": 4, "fp8": 8, "mxfp4": 4}
_WEIGHT_ALIASES = {"none": "none", "": "none", "auto": "none", "dense": "dense", "gptq": "gptq", "awq": "awq",
                   "fp8": "fp8", "mxfp4": "mxfp4", "int8": "int8", "llm.int8": "int8", "bnb-int8": "int8",
                   "8bit": "int8", "nf4": "nf4", "bnb-nf4": "nf4", "4bit": "nf4", "fp4": "fp4",
                   "bnb-fp4": "fp4", "int4": "nf4"}

PHASES = ("prefill", "generate")
CACHES = ("dynamic", "static")


def _pick(kind: str, value: str, table: dict[str, str]) -> str:
    key = str(value).strip().lower()
    if key not in table:
        choices = ", ".join(sorted(set(table.values())))
        raise MemcalError(f"unknown {kind} {value!r}: choose one of {choices}")
    return table[key]


def normalise_dtype(value: str) -> str:
    return _pick("dtype", value, _DTYPE_ALIASES)


def normalise_weights(value: str | None) -> str:
    if value is None:
        return "none"
    key = str(value).strip()
    upper = key.upper().removeprefix("GGUF:").removeprefix("GGUF-")
    if upper in GGUF_TYPES:
        return upper
    table = {**_WEIGHT_ALIASES, **{k.lower(): k for k in GGUF_TYPES}}
    return _pick("weight quantization", key, table)


def normalise_kv_dtype(value: str) -> str:
    return _pick("KV cache dtype", value, {**_DTYPE_ALIASES, "fp8": "fp8", "int8": "int8"})


# Fields added after results files were committed, with their defaults: what a record without one means,
# and left out of a point's id at the default so earlier ids stay what they were (harness/sweep).
ADDED_DEFAULTS = {"padding": 0}


@dataclass(frozen=True)
class Workload:
    """One inference workload. Lengths are in tokens.

    ``prompt_len`` is the prompt (the seeds' sequence length for a prefill); ``new_tokens`` the tokens
    that ``generate`` produces. ``kv_dtype`` defaults to ``dtype``. ``padding``: left-pad tokens in every
    row but the first (a batch of prompts ``padding`` tokens shorter than the longest, padded on the left
    as transformers pads for generate): the inputs carry an attention mask with that many zeros per row.
    """

    batch: int = 1
    prompt_len: int = 512
    new_tokens: int = 0
    dtype: str = "bf16"
    weights: str = "none"
    kv_dtype: str | None = None
    attention: str = "sdpa"
    phase: str | None = None
    cache: str = "dynamic"
    double_quant: bool = False
    padding: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "new_tokens", "padding"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MemcalError(f"{name} must be an integer, got {value!r}")
        if self.batch <= 0:
            raise MemcalError(f"batch must be positive, got {self.batch}")
        if self.prompt_len <= 0:
            raise MemcalError(f"sequence length must be positive, got {self.prompt_len}")
        if self.new_tokens < 0:
            raise MemcalError(f"new tokens must be zero or more, got {self.new_tokens}")
        if not 0 <= self.padding < self.prompt_len:
            raise MemcalError(f"padding must be at least 0 and less than the prompt ({self.prompt_len} tokens), "
                              f"got {self.padding}")
        if self.padding and self.batch < 2:
            raise MemcalError("padding pads every row but the first (the longest prompt): it needs batch 2 or more")
        set_ = object.__setattr__
        set_(self, "dtype", normalise_dtype(self.dtype))
        set_(self, "weights", normalise_weights(self.weights))
        set_(self, "kv_dtype", normalise_kv_dtype(self.kv_dtype or self.dtype))
        set_(self, "attention", _pick("attention implementation", self.attention,
                                      {"eager": "eager", "sdpa": "sdpa", "flash": "flash",
                                       "flash_attention_2": "flash", "fa2": "flash"}))
        set_(self, "cache", _pick("cache implementation", self.cache, {c: c for c in CACHES}))
        phase = self.phase or ("generate" if self.new_tokens > 0 else "prefill")
        set_(self, "phase", _pick("phase", phase, {p: p for p in PHASES}))
        if self.phase == "generate" and self.new_tokens < 1:
            raise MemcalError("phase generate needs at least one new token (--new-tokens N)")
        if self.phase == "prefill" and self.new_tokens > 0:
            raise MemcalError("phase prefill runs no new tokens: drop --new-tokens or use --phase generate")
        if self.double_quant and self.weights not in ("nf4", "fp4"):
            raise MemcalError("double quantization applies to 4-bit bitsandbytes weights (nf4, fp4) only")

    # --- derived quantities, shared by every formula -------------------------------------------
    @property
    def total_len(self) -> int:
        """Prompt plus generated tokens: the 'sequence length' of the seeds (input and output)."""
        return self.prompt_len + self.new_tokens

    @property
    def kv_len(self) -> int:
        """Positions a KV cache holds at the end: generate never feeds its last token back in."""
        return self.prompt_len + max(self.new_tokens - 1, 0)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_bytes(self) -> int:
        return KV_DTYPE_BYTES[self.kv_dtype]

    @property
    def is_gguf(self) -> bool:
        return self.weights in GGUF_TYPES

    @property
    def weight_bits(self) -> float:
        """Nominal bits per weight, as a seed's user would type it (16 for bf16, 4 for nf4, 4.5 for Q4_0)."""
        if self.weights in ("none", "dense"):
            return 8 * self.dtype_bytes
        if self.weights in METHOD_BITS:
            return METHOD_BITS[self.weights]
        if self.is_gguf:
            return GGUF_TYPES[self.weights][0]
        return BNB_BITS[self.weights]

    def mask_ones(self, length: int | None = None) -> int:
        """Ones in the attention mask over `length` positions (default the prompt): the tokens flash
        attention's unpadding keeps (the padding stays on the left as the mask grows)."""
        return self.batch * (length or self.prompt_len) - (self.batch - 1) * self.padding

    def with_(self, **changes) -> "Workload":
        """A copy with changes; a KV dtype that only followed the compute dtype keeps following it."""
        if "dtype" in changes and "kv_dtype" not in changes and self.kv_dtype == self.dtype:
            changes["kv_dtype"] = None
        return replace(self, **changes)

    def describe(self) -> str:
        weights = self.dtype if self.weights in ("none", "dense") else f"{self.weights} weights, {self.dtype} compute"
        text = f"batch {self.batch}, prompt {self.prompt_len}"
        if self.phase == "generate":
            text += f" + {self.new_tokens} new"
        if self.padding:
            text += f" ({self.padding} left-padded in rows 2-{self.batch})"
        return f"{text} tokens, {weights}, KV {self.kv_dtype}, {self.attention} attention, {self.phase}"
