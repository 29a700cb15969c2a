"""CUDA-side models for memcal, pure Python (no torch): GPU profiles, PyTorch's caching allocator,
SDPA backend choice and buffers, cuBLAS workspaces, bitsandbytes' CUDA transients.

See docs/cuda.md for the upstream sources of every fact and what is approximate.
"""
from .alloc_config import AllocatorOptions, allocation_size, format_size, parse_alloc_conf, round_size
from .allocator import Allocator, OutOfMemory
from .bnb import (int8_load_phases, linear4bit_phases, linear8bit_phases, nf4_load_phases, peak_bytes,
                  peak_phase)
from .bnb_dispatch import uses_fused_kernel
from .gpus import GPUS, GpuProfile, get_gpu, gpu_from_dict, gpu_names, load_gpu
from .sdpa import Choice, SdpaCall, SdpaEnv, priority_order, select_backend
from .sdpa_buffers import flash_num_splits, peak, sdpa_events
from .workspaces import (cublas_workspace_bytes, cublaslt_workspace_bytes, default_cublas_workspace_bytes,
                         workspace_allocations)

__all__ = [
    "Allocator", "AllocatorOptions", "Choice", "GPUS", "GpuProfile", "OutOfMemory", "SdpaCall", "SdpaEnv",
    "allocation_size", "cublas_workspace_bytes", "cublaslt_workspace_bytes", "default_cublas_workspace_bytes",
    "flash_num_splits", "format_size", "get_gpu", "gpu_from_dict", "gpu_names", "int8_load_phases",
    "linear4bit_phases", "linear8bit_phases", "load_gpu", "nf4_load_phases", "parse_alloc_conf", "peak",
    "peak_bytes", "peak_phase", "priority_order", "round_size", "sdpa_events", "select_backend",
    "uses_fused_kernel", "workspace_allocations",
]
