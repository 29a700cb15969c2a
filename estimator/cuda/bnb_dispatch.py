"""Which CUDA path bitsandbytes 0.50.2's 4-bit matmul takes: the fused kernel or dequantize + F.linear.

Source: bitsandbytes/backends/cuda/ops.py of bitsandbytes 0.50.2 (the version constraints/cpu.txt pins):
the kernel registered for bitsandbytes::gemm_4bit on CUDA falls back to _dequant_linear_fallback when
M > 1536 (_gemm_4bit_custom_max_m) or K % blocksize != 0, else asks _gemm_4bit_use_custom_cuda(M, N, K)
(M = tokens, N = out_features, K = in_features, n_blocks = ceil(N / 64), per-arch tiers calibrated on
real GPUs). That function is re-expressed below rule by rule, in the same order.
"""
from __future__ import annotations

CUSTOM_MAX_M = 1536  # _gemm_4bit_custom_max_m on CUDA
CUSTOM_FLOOR_M = 4  # _GEMM_4BIT_CUSTOM_FLOOR_M: at most this many rows always use the fused kernel


def uses_fused_kernel(tokens: int, out_features: int, in_features: int, dtype: str,
                      compute_capability: tuple[int, int], sm_count: int, blocksize: int = 64) -> bool:
    """True: the fused cgemm_4bit kernel (no dequantized weight); False: dequantize + F.linear."""
    if tokens > CUSTOM_MAX_M or in_features % blocksize:
        return False
    return _use_custom(tokens, out_features, in_features, dtype, compute_capability, sm_count)


def _use_custom(m: int, n: int, k: int, dtype: str, cc: tuple[int, int], sms: int) -> bool:
    if m <= CUSTOM_FLOOR_M:
        return True
    major, minor = cc
    blocks = -(-n // 64)
    if dtype == "fp32" or major < 7 or (major == 7 and (minor < 5 or dtype != "fp16")):
        return m < 8  # no MMA kernel: the SIMT range only
    if (major, minor) == (8, 7) or major == 11:
        return False
    if major == 10:
        return _sm100(m, n, k, blocks, sms)
    if n * k < 4 * 1024 * 1024:
        return _small_weight(m, n, k, cc, blocks, sms)
    if m > 512:
        return False
    if m < 8:
        return _rows_5_to_7(m, n, k, cc, blocks, sms)
    tiers = {(7, 5): _sm75, (8, 0): _sm80, (8, 6): _sm86}
    if major == 9:
        return _sm90(m, n, k, blocks, sms)
    if cc in tiers:
        return tiers[cc](m, n, k, blocks, sms)
    if cc == (12, 1) and blocks >= sms:
        return m <= 256
    if cc == (12, 0):
        return _sm120(m, n, k, blocks, sms)
    return _fallback_sm89(m, n, k, blocks, sms)


def _sm100(m, n, k, blocks, sms):
    if blocks >= sms * 3:
        return m <= 32
    if blocks >= sms:
        return False if k >= n else m <= 8
    return False


def _small_weight(m, n, k, cc, blocks, sms):
    hbm, sm80, sm75 = cc in ((8, 0),) or cc[0] == 9, cc == (8, 0), cc == (7, 5)
    if k * 2 < n:
        if hbm:
            low_wave = blocks * 3 < sms
            return m <= ((1536 if low_wave else 512) if sm80 else (512 if low_wave else 320))
        if sm75:
            if blocks >= sms * 3:
                return m <= 320
            return m <= (64 if k >= 1024 else 96 if k >= 704 else 320)
        if blocks >= sms:
            return m <= 320
        return m <= 192 if blocks * k > sms * 320 else m <= 320
    quarter_wave = blocks * 4 <= sms
    if sm80 and quarter_wave:
        return m <= (32 if blocks * 8 <= sms else 128) if k >= n else m <= 384
    if sm75 and blocks < sms and m > 8:
        return m <= 64
    if quarter_wave:
        return m <= (32 if (k < n or hbm) else 23)
    return m <= 16 if blocks * 2 <= sms else False


def _rows_5_to_7(m, n, k, cc, blocks, sms):
    sm90, hbm = cc[0] == 9, cc == (8, 0) or cc[0] == 9
    if hbm and m >= 6 and blocks >= (36 if sm90 else 48):
        below_75 = blocks * 4 < sms * 3
        below_60 = blocks * 5 < sms * 3
        if k > n and below_75:
            return False
        if k == n and ((cc == (8, 0) and below_60) or (sm90 and below_75 and not below_60)):
            return False
    return True


def _sm75(m, n, k, blocks, sms):
    if blocks >= sms * 3:
        return m <= (128 if k < n else 64)
    return m <= 64 if blocks >= sms // 2 else m <= 32


def _sm80(m, n, k, blocks, sms):
    if blocks >= sms * 3:
        return m <= 128
    if blocks >= sms:
        return m <= (64 if k < n else 32)
    if k >= n * 3 and blocks * 4 > sms:
        return False
    if k == n and blocks >= 48 and blocks * 5 < sms * 3:
        return False
    if blocks * 2 < sms:
        if k <= n:
            return m <= 128
        if blocks * 3 >= sms:
            return False
    if blocks >= sms // 2 and k < n:
        return m <= 128
    return m <= 16


def _sm86(m, n, k, blocks, sms):
    if blocks >= sms:
        return m <= 128
    return m <= 64 if blocks >= sms // 2 else m <= 16


def _sm90(m, n, k, blocks, sms):
    for factor, cap in ((3, 64), (2, 48), (1, 32)):
        if blocks >= sms * factor:
            return m <= cap
    if blocks >= sms // 2:
        return False if k >= n and blocks * 4 < sms * 3 else m <= 16
    return False


def _sm120(m, n, k, blocks, sms):
    if blocks >= sms * 3:
        return m <= 256
    if blocks >= sms * 2:
        return m <= 128
    if blocks * 5 >= sms * 4:
        return m <= (96 if k >= n else 64)
    if blocks >= sms:
        return m <= 64
    if blocks >= sms // 2:
        return m <= (64 if (k * 2 >= n and blocks >= 128) else 8)
    if k > n * 2 and blocks > 64:
        return m <= 16
    return m <= 8


def _fallback_sm89(m, n, k, blocks, sms):
    tall_k = k > n * 2
    if blocks >= sms * 3:
        return m <= 256
    if blocks >= sms * 2:
        return m <= 128
    if blocks * 5 >= sms * 4:
        if tall_k or blocks >= 200:
            return m <= 128
        return m <= (128 if sms >= 60 else 32) if k >= n else m <= 64
    if blocks >= sms // 2:
        return m <= 64 if tall_k else (m <= 8 if blocks >= 64 else m <= 32)
    if k > n and blocks <= 48:
        return m <= (12 if k >= n * 3 else 10)
    return m <= (16 if (tall_k or blocks < 48) else 8)
