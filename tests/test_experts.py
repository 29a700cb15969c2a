"""MoE experts on the CPU (harness/experts.py): the dry run's grouped_mm answers as torch's CPU kernel
does, to the output's strides and storage, and transformers' experts take their fallback exactly where
that kernel would raise."""
from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
from harness.experts import cpu_kernel_accepts, install  # noqa: E402
from harness.fakemode import DryRunMode  # noqa: E402


def _describe(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.dtype, t.untyped_storage().nbytes()


def _real_and_fake(x, w, offs):
    try:
        real = _describe(torch._grouped_mm(x, w, offs))
    except RuntimeError as exc:
        real = str(exc)
    mode = DryRunMode()
    try:
        with mode:
            fake = _describe(torch._grouped_mm(mode.from_tensor(x), mode.from_tensor(w), mode.from_tensor(offs)))
    except RuntimeError as exc:
        fake = str(exc)
    return real, fake


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fake_grouped_mm_is_the_cpu_kernel(dtype):
    offs = torch.tensor([1, 3, 5], dtype=torch.int32)
    for k, n, transposed in itertools.product((3, 4, 8, 16), (1, 6, 8), (False, True)):
        x = torch.randn(5, k, dtype=dtype)
        w = torch.randn(3, n, k, dtype=dtype).transpose(-2, -1) if transposed else torch.randn(3, k, n, dtype=dtype)
        real, fake = _real_and_fake(x, w, offs)
        assert real == fake, (k, n, transposed)
        assert isinstance(real, tuple) == cpu_kernel_accepts(x, w)


def test_transformers_falls_back_where_the_cpu_kernel_would_raise():
    from transformers.integrations import moe
    install()
    install()  # idempotent: one wrapper
    assert moe._can_use_grouped_mm._memcal
    offs = torch.tensor([2], dtype=torch.int32)
    aligned = torch.randn(1, 8, 16, dtype=torch.bfloat16)
    assert moe._can_use_grouped_mm(torch.randn(2, 8, dtype=torch.bfloat16), aligned, offs)
    assert not moe._can_use_grouped_mm(torch.randn(2, 6, dtype=torch.bfloat16), torch.randn(1, 6, 16), offs)
    out = moe._grouped_mm(torch.randn(2, 6), torch.randn(1, 6, 5), offs)  # the fallback op, not an error
    assert out.shape == (2, 5)
