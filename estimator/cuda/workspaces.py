"""cuBLAS and cuBLASLt workspaces: their sizes and the allocations they make in the caching allocator.

Source: aten/src/ATen/cuda/CublasHandlePool.cpp (main, the version with TORCH_CUBLASLT_UNIFIED_WORKSPACE
and a separate cublaslt_handle_stream_to_workspace map; the torch 2.13.0 wheel's CUDAContextLight.h
declares both maps, getChosenWorkspaceSize and getCUDABlasLtWorkspaceSize):
* parseChosenWorkspaceSize: CUBLAS_WORKSPACE_CONFIG is scanned with the regex ":([0-9]+):([0-9]+)",
  each match adding SIZE KiB * COUNT; no match (also "" or "-1") -> the default. The default is
  ":4096:2:16:8" = 4096 KiB * 2 + 16 KiB * 8 = 8,519,680 bytes, and 4096 KiB * 8 = 32 MiB when the
  device is exactly sm_90 (major == 9 && minor == 0; Blackwell sm_100 gets the 8 MiB default).
* parseCUDABlasLtWorkspaceSize: CUBLASLT_WORKSPACE_SIZE in KiB (std::stoi; invalid -> default), default
  1024 KiB. getCUDABlasLtWorkspaceSize caps it at the cuBLAS size unless TORCH_CUBLASLT_UNIFIED_WORKSPACE
  is "0" (unset counts as unified for the cap).
* getNewWorkspace / getNewCUDABlasLtWorkspace: CUDACachingAllocator::get()->allocate(size), so both are
  ordinary caching-allocator blocks that stay allocated (they count in max_memory_allocated).
* setWorkspaceForHandle: one cuBLAS workspace per (handle, stream), made by getCurrentCUDABlasHandle,
  i.e. by the first cuBLAS call on that stream. getCUDABlasLtWorkspace: one cuBLASLt workspace per
  (handle, stream), made by the first cuBLASLt call (gemm_and_bias: addmm with a bias, scaled_mm,
  int8 _int_mm, or every gemm when the preferred BLAS backend is cublaslt), unless
  TORCH_CUBLASLT_UNIFIED_WORKSPACE=1, when the Lt calls borrow the cuBLAS workspace.
c10::utils::check_env accepts only "0" and "1" (anything else is ignored with a warning).
Checked against test_cuda.py test_cublas_workspace_explicit_allocation (see tests/test_cuda_workspaces.py).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from estimator.errors import MemcalError
from estimator.units import KiB

DEFAULT_CUBLAS_WORKSPACE_BYTES = 4096 * KiB * 2 + 16 * KiB * 8  # ":4096:2:16:8"
SM90_CUBLAS_WORKSPACE_BYTES = 4096 * KiB * 8  # 32 MiB on Hopper (sm_90)
DEFAULT_CUBLASLT_WORKSPACE_BYTES = 1024 * KiB
_CONFIG_ITEM = re.compile(r":([0-9]+):([0-9]+)")


def compute_capability(arch) -> tuple[int, int]:
    """(9, 0) from (9, 0), 'sm_90', '9.0' or a GpuProfile."""
    if hasattr(arch, "compute_capability"):
        return tuple(arch.compute_capability)
    if isinstance(arch, tuple) and len(arch) == 2:
        return int(arch[0]), int(arch[1])
    match = re.fullmatch(r"(?:sm_?)?(\d+?)(?:\.)?(\d)", str(arch).strip().lower())
    if not match:
        raise MemcalError(f"not a GPU architecture: {arch!r} (write sm_90, 9.0 or (9, 0))")
    return int(match.group(1)), int(match.group(2))


def default_cublas_workspace_bytes(arch) -> int:
    return SM90_CUBLAS_WORKSPACE_BYTES if compute_capability(arch) == (9, 0) else DEFAULT_CUBLAS_WORKSPACE_BYTES


def cublas_workspace_bytes(arch, env: Mapping[str, str] | None = None) -> int:
    """getChosenWorkspaceSize: CUBLAS_WORKSPACE_CONFIG's sum of SIZE KiB * COUNT, else the default."""
    value = (env or {}).get("CUBLAS_WORKSPACE_CONFIG")
    matches = _CONFIG_ITEM.findall(value) if value is not None else []
    if not matches:
        return default_cublas_workspace_bytes(arch)
    return sum(int(size) * KiB * int(count) for size, count in matches)


def cublaslt_workspace_bytes(arch, env: Mapping[str, str] | None = None) -> int:
    """getCUDABlasLtWorkspaceSize: CUBLASLT_WORKSPACE_SIZE KiB (1024), capped at cuBLAS's unless unified=0."""
    env = env or {}
    size = DEFAULT_CUBLASLT_WORKSPACE_BYTES
    text = env.get("CUBLASLT_WORKSPACE_SIZE")
    if text is not None and re.fullmatch(r"\s*[+-]?\d+.*", text):
        size = int(re.match(r"\s*([+-]?\d+)", text).group(1)) * KiB
    if _check_env(env, "TORCH_CUBLASLT_UNIFIED_WORKSPACE") is not False:
        size = min(size, cublas_workspace_bytes(arch, env))
    return size


def cublaslt_uses_cublas_workspace(env: Mapping[str, str] | None = None) -> bool:
    """getCUDABlasLtWorkspace borrows the cuBLAS workspace only when TORCH_CUBLASLT_UNIFIED_WORKSPACE=1."""
    return _check_env(env or {}, "TORCH_CUBLASLT_UNIFIED_WORKSPACE") is True


def workspace_allocations(arch, env: Mapping[str, str] | None = None, *, cublaslt: bool = False,
                          streams: int = 1) -> list[int]:
    """The caching-allocator requests (bytes) made by the first matmul on each of `streams` streams.

    cublaslt: whether that first work also takes a cuBLASLt path (e.g. a Linear with a bias).
    Zero sizes are dropped: NativeCachingAllocator::allocate never calls malloc for 0 bytes.
    """
    if streams < 1:
        raise MemcalError("streams must be at least 1")
    per_stream = [cublas_workspace_bytes(arch, env)]
    if cublaslt and not cublaslt_uses_cublas_workspace(env):
        per_stream.append(cublaslt_workspace_bytes(arch, env))
    return [size for _ in range(streams) for size in per_stream if size > 0]


def _check_env(env: Mapping[str, str], name: str) -> bool | None:
    """c10::utils::check_env: '0' -> False, '1' -> True, anything else (or unset) -> None."""
    return {"0": False, "1": True}.get(env.get(name))


__all__ = ["DEFAULT_CUBLAS_WORKSPACE_BYTES", "SM90_CUBLAS_WORKSPACE_BYTES", "compute_capability",
           "cublas_workspace_bytes", "cublaslt_uses_cublas_workspace", "cublaslt_workspace_bytes",
           "default_cublas_workspace_bytes", "workspace_allocations"]
