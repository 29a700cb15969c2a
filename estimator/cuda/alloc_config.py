"""PYTORCH_CUDA_ALLOC_CONF as torch 2.13 parses it, and the caching allocator's size rules.

Sources (read for this module; torch 2.13.0 = git cf30153c):
* c10/core/AllocatorConfig.h of the torch 2.13.0 wheel (torch/include): the constants kMinBlockSize,
  kSmallSize, kSmallBuffer, kMinLargeAlloc, kRoundLarge; ConfigTokenizer; the defaults of
  AcceleratorAllocatorConfig (large_segment_size_ 20 MiB, max_split_size_ = SIZE_MAX,
  max_non_split_rounding_size_ = large_segment_size_, garbage_collection_threshold_ 0,
  use_expandable_segments_ false, 16 roundup_power2_divisions_ slots).
* c10/core/AllocatorConfig.cpp (main after the AcceleratorAllocatorConfig refactor, quoted line by
  line in a public code analysis of it): parseArgs (resets max_split_size, roundup divisions and the
  gc threshold on every call; reads large_segment_size_mb first, then sets
  max_non_split_rounding_size_ = large_segment_size_), parseLargeSegmentSize (> 10 MB),
  parseMaxSplitSize / parseMaxNonSplitRoundingSize (>= large_segment_size_mb),
  parseGarbageCollectionThreshold (in (0, 1)), parseRoundUpPower2Divisions, roundup_power2_divisions.
* c10/cuda/CUDAAllocatorConfig.h of the 2.13.0 wheel: the CUDA-only keys, among them
  per_process_memory_fraction (in [0, 1]).
* c10/cuda/CUDACachingAllocator.cpp (DeviceCachingAllocator::round_size,
  roundup_power2_next_division, get_allocation_size) and c10/core/Allocator.h format_size (2.13 wheel).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from estimator.errors import MemcalError
from estimator.units import MiB

K_MIN_BLOCK_SIZE = 512  # all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1 * MiB  # largest "small" allocation
K_SMALL_BUFFER = 2 * MiB  # small allocations are packed in 2 MiB segments
K_MIN_LARGE_ALLOC = 10 * MiB  # allocations between 1 and 10 MiB may use a large segment
K_ROUND_LARGE = 2 * MiB  # larger allocations are rounded up to 2 MiB
K_LARGE_BUFFER = 20 * MiB  # default large_segment_size
_ROUNDUP_SLOTS = 16  # roundup_power2_divisions: one slot per power of two from 1 MiB to 64 GiB
_UNLIMITED = 2**64 - 1  # std::numeric_limits<size_t>::max(), "no max_split_size"

# keys accepted by AcceleratorAllocatorConfig and CUDAAllocatorConfig that do not change the model
_IGNORED_KEYS = frozenset({
    "backend", "release_lock_on_cudamalloc", "pinned_use_cuda_host_register", "pinned_num_register_threads",
    "pinned_use_background_threads", "pinned_reserve_segment_size_mb", "pinned_free_catch_all",
    "graph_capture_record_stream_reuse", "throw_on_cudamalloc_oom", "release_lock_on_hipmalloc",
    "pinned_use_hip_host_register",
})


@dataclass(frozen=True)
class AllocatorOptions:
    """The caching allocator's settings; defaults are torch 2.13's."""

    max_split_size_bytes: int = _UNLIMITED
    max_non_split_rounding_bytes: int = K_LARGE_BUFFER
    large_segment_size_bytes: int = K_LARGE_BUFFER
    garbage_collection_threshold: float = 0.0
    expandable_segments: bool = False
    roundup_power2_divisions: tuple[int, ...] = (0,) * _ROUNDUP_SLOTS
    per_process_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        if len(self.roundup_power2_divisions) != _ROUNDUP_SLOTS:
            raise MemcalError(f"roundup_power2_divisions needs {_ROUNDUP_SLOTS} slots")

    @property
    def limits_split(self) -> bool:
        return self.max_split_size_bytes != _UNLIMITED


def parse_alloc_conf(text: str | None) -> AllocatorOptions:
    """AllocatorOptions from a PYTORCH_CUDA_ALLOC_CONF string, e.g. 'expandable_segments:True'."""
    tokens = re.findall(r"[,:\[\]]|[^,:\[\]\s]+", text or "")
    fields: dict = {}
    large = _large_segment(tokens)
    fields["large_segment_size_bytes"] = large
    fields["max_non_split_rounding_bytes"] = large
    i = 0
    while i < len(tokens):
        i = _parse_key(tokens, i, fields, large)
        if i + 1 < len(tokens):
            _expect(tokens, i + 1, ",")
            i += 1
        i += 1
    return replace(AllocatorOptions(), **fields)


def _large_segment(tokens: list[str]) -> int:
    for i, token in enumerate(tokens):
        if token == "large_segment_size_mb":
            mb = _int(tokens, i + 2, token)
            if mb <= K_MIN_LARGE_ALLOC // MiB:
                raise MemcalError(f"CachingAllocator option large_segment_size_mb must be > {K_MIN_LARGE_ALLOC // MiB} MB")
            return mb * MiB
    return K_LARGE_BUFFER


def _parse_key(tokens: list[str], i: int, fields: dict, large: int) -> int:
    key = tokens[i]
    _expect(tokens, i + 1, ":")
    if key in ("max_split_size_mb", "max_non_split_rounding_mb"):
        mb = _int(tokens, i + 2, key)
        if mb < large // MiB:
            raise MemcalError(f"CachingAllocator option {key} too small, must be >= {large // MiB}")
        name = "max_split_size_bytes" if key == "max_split_size_mb" else "max_non_split_rounding_bytes"
        fields[name] = mb * MiB
    elif key == "garbage_collection_threshold":
        fields["garbage_collection_threshold"] = _fraction(tokens, i + 2, key, open_interval=True)
    elif key == "per_process_memory_fraction":
        fields["per_process_memory_fraction"] = _fraction(tokens, i + 2, key, open_interval=False)
    elif key == "expandable_segments":
        fields["expandable_segments"] = _bool(tokens, i + 2, key)
    elif key == "roundup_power2_divisions":
        divisions, end = _roundup(tokens, i + 2)
        fields["roundup_power2_divisions"] = divisions
        return end
    elif key in _IGNORED_KEYS or key == "large_segment_size_mb":
        return _skip_value(tokens, i + 2)
    else:
        raise MemcalError(f"Unrecognized key '{key}' in PYTORCH_CUDA_ALLOC_CONF")
    return i + 2


def _roundup(tokens: list[str], i: int) -> tuple[tuple[int, ...], int]:
    """roundup_power2_divisions:4 (every slot) or :[64:8,256:4,>:1] (per interval of MiB)."""
    if _token(tokens, i) != "[":
        value = _int(tokens, i, "roundup_power2_divisions")
        _check_power2(value, zero_ok=False)
        return (value,) * _ROUNDUP_SLOTS, i
    slots, last, first = [0] * _ROUNDUP_SLOTS, 0, True
    i += 1
    while _token(tokens, i) != "]":
        boundary = tokens[i]
        _expect(tokens, i + 1, ":")
        value = _int(tokens, i + 2, "roundup_power2_divisions")
        _check_power2(value, zero_ok=True)
        if boundary == ">":
            slots[last + 1:] = [value] * (_ROUNDUP_SLOTS - last - 1)
        else:
            index = min(_log2(_power2_boundary(boundary)), _ROUNDUP_SLOTS - 1)
            if first:
                slots[:index] = [value] * index
                first = False
            slots[index], last = value, index
        i += 3
        if _token(tokens, i) == ",":
            i += 1
    return tuple(slots), i


def roundup_divisions(options: AllocatorOptions, size: int) -> int:
    """AcceleratorAllocatorConfig::roundup_power2_divisions(size): the slot of size's power of two."""
    index = max(_log2(size) - 20, 0)
    return options.roundup_power2_divisions[min(index, _ROUNDUP_SLOTS - 1)]


def round_size(options: AllocatorOptions, size: int) -> int:
    """DeviceCachingAllocator::round_size: the block size a request of `size` bytes gets."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    divisions = roundup_divisions(options, size)
    if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
        return _roundup_power2_next_division(size, divisions)
    return _ceil_to(size, K_MIN_BLOCK_SIZE)


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    if size & (size - 1) == 0:
        return size
    floor = 1 << _log2(size)
    step = floor >> _log2(divisions)
    if step == 0:
        return floor << 1
    return size if size % step == 0 else (size // step + 1) * step


def allocation_size(options: AllocatorOptions, size: int) -> int:
    """DeviceCachingAllocator::get_allocation_size: the segment cudaMalloc'd for a rounded request."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return options.large_segment_size_bytes
    return _ceil_to(size, K_ROUND_LARGE)


def format_size(size: int) -> str:
    """c10::CachingAllocator::format_size (c10/core/Allocator.h), as OOM messages print sizes."""
    if size <= 1024:
        return f"{size} bytes"
    for limit, divisor, unit in ((2**20, 1024.0, "KiB"), (2**30, 2.0**20, "MiB")):
        if size <= limit:
            return f"{size / divisor:.2f} {unit}"
    return f"{size / 2.0**30:.2f} GiB"


def _ceil_to(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _log2(value: int) -> int:
    return value.bit_length() - 1


def _power2_boundary(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    _check_power2(value, zero_ok=False, what="intervals")
    return value


def _check_power2(value: int, zero_ok: bool, what: str = "divisions") -> None:
    if not (value == 0 and zero_ok) and (value <= 0 or value & (value - 1)):
        raise MemcalError(f"For roundups, the {what} has to be power of 2, got {value}")


def _token(tokens: list[str], i: int) -> str:
    if i >= len(tokens):
        raise MemcalError("PYTORCH_CUDA_ALLOC_CONF ends too early")
    return tokens[i]


def _expect(tokens: list[str], i: int, token: str) -> None:
    if _token(tokens, i) != token:
        raise MemcalError(f"PYTORCH_CUDA_ALLOC_CONF: expected {token!r} at token {i}, got {tokens[i]!r}")


def _int(tokens: list[str], i: int, key: str) -> int:
    text = _token(tokens, i)
    if not text.isdigit():
        raise MemcalError(f"PYTORCH_CUDA_ALLOC_CONF: {key} needs a whole number, got {text!r}")
    return int(text)


def _fraction(tokens: list[str], i: int, key: str, open_interval: bool) -> float:
    try:
        value = float(_token(tokens, i))
    except ValueError:
        value = math.nan
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        raise MemcalError(f"PYTORCH_CUDA_ALLOC_CONF: {key} is invalid, got {tokens[i]!r}")
    return value


def _bool(tokens: list[str], i: int, key: str) -> bool:
    text = _token(tokens, i)
    if text not in ("True", "False"):
        raise MemcalError(f"Expected 'True' or 'False' for {key}, got {text!r}")
    return text == "True"


def _skip_value(tokens: list[str], i: int) -> int:
    if _token(tokens, i) != "[":
        return i
    while _token(tokens, i) != "]":
        i += 1
    return i
