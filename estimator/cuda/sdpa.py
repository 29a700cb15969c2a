"""Which kernel F.scaled_dot_product_attention runs on CUDA, decided as torch 2.13 decides it.

Source: aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, stored pytorch/pytorch version 001f694a
(main after PR #169849: cuDNN preferred only with cuDNN > 9.15), with the shared checks of
aten/src/ATen/native/transformers/sdp_utils_cpp.h (stored version 0119c205) and the default priority
order and flags of ATen/Context.h in the torch 2.13.0 wheel (flash, efficient, math, cudnn; FA3 off).
select_sdp_backend walks priority_order() and returns the first backend whose can_use_* passes; each
can_use_* is a list of checks run in order, and the first that fails is the reason reported here.

Inference only (no input requires grad), dense 4-D inputs with a contiguous last dimension and storage
offsets aligned for the CUTLASS kernels (what transformers' attention passes) unless told otherwise.
The torch 2.13.0 wheel on PyPI is built with CUDA 13.0.3 and cuDNN 9.20.0.48 (its requires_dist), so the
defaults here are cuda_version 13000 and cudnn_version 92000.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from estimator.errors import MemcalError

from .workspaces import compute_capability

BACKENDS = ("flash", "efficient", "cudnn", "math")
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
MASKS = ("none", "bool", "float")


@dataclass(frozen=True)
class SdpaCall:
    """The shapes and flags of one SDPA call: q (b, heads, q_len, head_dim), k/v (b, kv_heads, kv_len, ...)."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: str = "bf16"
    kv_heads: int | None = None
    head_dim_v: int | None = None
    mask: str = "none"
    mask_batch: int | None = None  # the mask's batch dim (default: batch); 1 for a broadcast mask
    mask_heads: int = 1  # the mask's head dim (transformers: 1)
    is_causal: bool = False
    enable_gqa: bool = False
    dropout: float = 0.0
    last_dim_contiguous: bool = True
    offsets_aligned: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise MemcalError(f"SDPA dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.mask not in MASKS:
            raise MemcalError(f"SDPA mask must be one of {MASKS}, got {self.mask!r}")
        if self.is_causal and self.mask != "none":
            raise MemcalError("SDPA: an explicit attn_mask cannot be combined with is_causal=True")
        if min(self.batch, self.heads, self.head_dim, self.kv_h) <= 0 or min(self.q_len, self.kv_len) < 0:
            raise MemcalError("SDPA shapes must be positive")

    @property
    def kv_h(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def d_v(self) -> int:
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

    @property
    def element_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class SdpaEnv:
    """The device and the global switches (torch.backends.cuda.enable_*_sdp, env variables)."""

    compute_capability: tuple[int, int] = (9, 0)
    cudnn_version: int = 92000
    cuda_version: int = 13000
    enabled: frozenset = field(default_factory=lambda: frozenset(BACKENDS))
    cudnn_deprioritized: bool = False  # TORCH_CUDNN_SDPA_DEPRIORITIZED=1
    deterministic: bool = False  # torch.use_deterministic_algorithms(True), not warn_only

    @classmethod
    def for_gpu(cls, gpu, **overrides) -> "SdpaEnv":
        return cls(compute_capability=compute_capability(gpu), **overrides)


@dataclass(frozen=True)
class Choice:
    """The backend chosen and, for each backend tried before it, the check that ruled it out."""

    backend: str
    rejected: tuple[tuple[str, str], ...]

    @property
    def reasons(self) -> dict[str, str]:
        return dict(self.rejected)


def priority_order(env: SdpaEnv) -> tuple[str, ...]:
    """priority_order + check_prefer_cudnn_attention: cuDNN first on sm90/sm10x with cuDNN > 9.15."""
    major, minor = env.compute_capability
    hopper_or_blackwell = major in (9, 10) and (env.cuda_version >= 13000 or minor in (0, 3))
    if not env.cudnn_deprioritized and env.cudnn_version > 91500 and hopper_or_blackwell:
        return ("cudnn", "flash", "efficient", "math")
    return ("flash", "efficient", "math", "cudnn")


def select_backend(call: SdpaCall, env: SdpaEnv = SdpaEnv()) -> Choice:
    """select_sdp_backend: the first usable backend in priority order."""
    rejected = []
    for backend in priority_order(env):
        reason = _MATH_DISABLED if backend == "math" and "math" not in env.enabled else _CHECKS[backend](call, env)
        if reason is None:
            return Choice(backend, tuple(rejected))
        rejected.append((backend, reason))
    raise MemcalError("No available kernel for scaled_dot_product_attention: " +
                      "; ".join(f"{b}: {r}" for b, r in rejected))


_MATH_DISABLED = "math disabled by torch.backends.cuda.enable_math_sdp(False)"


def _first_failure(checks, call: SdpaCall, env: SdpaEnv) -> str | None:
    for check in checks:
        reason = check(call, env)
        if reason:
            return reason
    return None


def _enabled(name):
    return lambda c, e: None if name in e.enabled else f"{name} runtime disabled"


def _sm_range(low, high, what):
    def check(c, e):
        return None if low <= e.compute_capability <= high else f"{what} needs sm{low[0]}{low[1]}..sm{high[0]}{high[1]}"
    return check


def _dtypes(by_major):
    def check(c, e):
        allowed = next(d for major, d in by_major if e.compute_capability[0] >= major)
        return None if c.dtype in allowed else f"dtype {c.dtype} not in {sorted(allowed)}"
    return check


def _no_mask(c, e):
    return "flash does not support an attn_mask" if c.mask != "none" else None


def _flash_head_dim(c, e):
    return None if c.head_dim == c.d_v and c.head_dim <= 256 else "flash needs q, k, v head dims equal and <= 256"


def _causal_square(c, e):
    return "flash: is_causal needs q_len == kv_len" if c.is_causal and c.q_len != c.kv_len else None


def _heads(c, e):
    """check_batch_size_and_num_heads_dense: equal heads, or kv heads dividing q heads with enable_gqa."""
    if c.enable_gqa:
        return None if c.heads % c.kv_h == 0 else "kv heads must divide q heads"
    return None if c.heads == c.kv_h else "q and kv num_heads differ without enable_gqa"


def _nonzero(c, e):
    return None if c.q_len > 0 and c.kv_len > 0 else "zero seq_len"


def _stride(c, e):
    return None if c.last_dim_contiguous else "last dimension not contiguous"


def gemm_alignment(dtype: str, cc: tuple[int, int]) -> int:
    """minimum_gemm_alignment: 4 on sm80+, raised to 128 bits / element when tensor cores are used."""
    half = dtype in ("fp16", "bf16")
    tensor_cores = cc[0] >= 8 or (cc[0] >= 7 and half)
    alignment = 4 if cc[0] >= 8 else 1
    return max(alignment, 128 // (16 if half else 32)) if tensor_cores else alignment


def _mem_eff_head_dim(c, e):
    align = gemm_alignment(c.dtype, e.compute_capability)
    ok = c.head_dim % align == 0 and c.d_v % align == 0
    return None if ok else f"efficient needs head dims divisible by {align}"


def _offsets(c, e):
    aligned = c.offsets_aligned or e.compute_capability[0] < 8
    return None if aligned else "efficient needs aligned storage offsets on sm80+"


def _deterministic(c, e):
    return "cuDNN SDPA is not deterministic" if e.deterministic else None


def _cudnn_dropout(c, e):
    return None if (c.dropout * 16).is_integer() else "cuDNN dropout must be a multiple of 1/16"


def _cudnn_version(c, e):
    if e.cudnn_version < 90000:
        return "cuDNN older than 9.0"
    return "cuDNN 9.11-9.13 has no SDPA dropout" if c.dropout > 0 and 91100 < e.cudnn_version < 91400 else None


def cudnn_head_dim_limit(c: SdpaCall, e: SdpaEnv) -> int:
    """check_cudnn_tensor_shapes: 128, 256 on sm90/sm10x with cuDNN > 9.22, 192/128 with cuDNN >= 9.11."""
    major, minor = e.compute_capability
    sm90_or_10x = (major == 9 and minor == 0) or major == 10
    sm107_too_old = (major, minor) == (10, 7) and e.cudnn_version <= 92500
    if sm90_or_10x and not sm107_too_old and e.cudnn_version > 92200:
        return 256
    if sm90_or_10x and e.cudnn_version >= 91100 and (c.head_dim, c.d_v) == (192, 128):
        return 192
    return 128


def _cudnn_shapes(c, e):
    limit = cudnn_head_dim_limit(c, e)
    rules = (
        (c.batch <= 65535 and c.heads <= 65535, "cuDNN: batch and heads <= 65535"),
        (c.head_dim <= limit and c.d_v <= limit, f"cuDNN: head_dim <= {limit}"),
        (c.head_dim % 8 == 0 and c.d_v % 8 == 0, "cuDNN: head_dim a multiple of 8"),
        (c.kv_len != 1, "cuDNN: kv_len 1 is not supported"),
        (not (c.dropout and c.q_len == 1), "cuDNN: q_len 1 with dropout"),
    )
    return next((reason for ok, reason in rules if not ok), None)


_SM80_HALF = ((8, {"fp16", "bf16"}), (0, {"fp16"}))
_CHECKS = {
    "flash": lambda c, e: _first_failure((_enabled("flash"), _no_mask, _flash_head_dim,
                                          _sm_range((8, 0), (12, 1), "flash"), _causal_square, _dtypes(_SM80_HALF),
                                          _heads, _nonzero, _stride), c, e),
    "efficient": lambda c, e: _first_failure((_enabled("efficient"), _sm_range((5, 0), (12, 1), "efficient"),
                                              _mem_eff_head_dim, _offsets, _nonzero, _stride, _heads,
                                              _dtypes(((8, {"fp16", "fp32", "bf16"}), (0, {"fp16", "fp32"})))),
                                             c, e),
    "cudnn": lambda c, e: _first_failure((_enabled("cudnn"), _cudnn_version, _deterministic, _dtypes(_SM80_HALF),
                                          _sm_range((8, 0), (12, 1), "cuDNN"), _cudnn_dropout, _nonzero, _stride,
                                          _heads, _cudnn_shapes), c, e),
    "math": lambda c, e: None,
}
