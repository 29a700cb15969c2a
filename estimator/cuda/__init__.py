"""CUDA-side models for memcal, pure Python (no torch): GPU profiles, PyTorch's caching allocator,
SDPA backend choice and buffers, cuBLAS workspaces, bitsandbytes' CUDA transients.

See docs/cuda.md for the upstream sources of every fact and what is approximate.
"""
from .alloc_config import AllocatorOptions, allocation_size, format_size, parse_alloc_conf, round_size
from .allocator import Allocator, OutOfMemory

__all__ = [
    "Allocator", "AllocatorOptions", "OutOfMemory", "allocation_size", "format_size", "parse_alloc_conf",
    "round_size",
]
