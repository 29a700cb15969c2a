"""MoE experts on the CPU: the same path in a real run and in a dry run, for any dtype and size.

transformers 5.23 runs fused experts through ``grouped_mm_experts_forward``, which calls torch's
``grouped_mm`` unless ``_can_use_grouped_mm`` says no, and then its own fallback op
(``transformers::grouped_mm_fallback``: one torch.mm per expert into a zeroed output, the same one
output tensor). Two things differ between a real CPU run and a dry run there:

* **The kernel's rules.** torch's CPU kernel (torch 2.13) accepts fp32, fp16 and bf16 and raises
  "strides should be multiple of 16 bytes" when an operand's leading stride is not a multiple of 16
  bytes. The fake (meta) kernel is CUDA's: bf16 only. `fake_grouped_mm` answers the op for fake CPU
  tensors by the CPU kernel's rules (same checks, same output), so an fp32 dry run runs as a real one.
* **The fallback.** transformers falls back on the CPU only for torch <= 2.10's alignment check
  (data pointers), so with torch 2.13 a model whose hidden or expert width is not a multiple of 16
  bytes (tiny test configs; no released checkpoint) raises in a real CPU run. `install` extends
  transformers' own rule to what torch's CPU kernel checks: such operands take transformers'
  fallback, in a real run and a dry run alike. Every case the kernel accepts is left as it was.
"""
from __future__ import annotations

import torch

__all__ = ["install", "cpu_kernel_accepts", "fake_grouped_mm", "GROUPED_MM"]

GROUPED_MM = torch.ops.aten._grouped_mm.default
_ALIGNMENT_BYTES = 16
_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _strides_ok(t: torch.Tensor, element_size: int) -> bool:
    """The leading stride of the last two dims is a multiple of 16 bytes (row- or column-major)."""
    stride, shape = t.stride(), t.shape
    if stride[-2] == 1 and stride[-1] >= max(1, shape[-2]):
        return stride[-1] * element_size % _ALIGNMENT_BYTES == 0
    if stride[-1] == 1 and stride[-2] >= max(1, shape[-1]):
        return stride[-2] * element_size % _ALIGNMENT_BYTES == 0
    return False


def cpu_kernel_accepts(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """Would torch's CPU grouped_mm take these operands (`input` cast to the weight's dtype, as
    transformers passes it)?"""
    size = weight.element_size()
    return weight.dtype in _CPU_DTYPES and _strides_ok(input, size) and _strides_ok(weight, size)


def fake_grouped_mm(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """aten._grouped_mm of fake CPU tensors, 2-D input by 3-D weight (the experts' case), by the CPU
    kernel's rules; call inside the fake mode. Other layouts return NotImplemented."""
    if mat_a.dim() != 2 or mat_b.dim() != 3 or offs is None or bias is not None:
        return NotImplemented
    if mat_a.dtype != mat_b.dtype or not cpu_kernel_accepts(mat_a, mat_b):
        raise RuntimeError("strides should be multiple of 16 bytes")  # the CPU kernel's message
    dtype = out_dtype or mat_a.dtype
    rows, cols = mat_a.size(0), mat_b.size(-1)
    step = _ALIGNMENT_BYTES // dtype.itemsize  # the kernel pads each output row to 16 bytes
    return torch.empty_strided((rows, cols), (-(-cols // step) * step, 1), dtype=dtype, device=mat_a.device)


def install() -> None:
    """Make transformers' experts take its fallback on the CPU wherever torch's kernel would raise
    (see the module docstring). Idempotent; leaves every other device and case to transformers."""
    from transformers.integrations import moe
    original = moe._can_use_grouped_mm
    if getattr(original, "_memcal", False):
        return

    def can_use_grouped_mm(input, weight, offs):
        if weight.device.type == "cpu" and not cpu_kernel_accepts(input, weight):
            return False
        return original(input, weight, offs)

    can_use_grouped_mm._memcal = True
    moe._can_use_grouped_mm = can_use_grouped_mm
