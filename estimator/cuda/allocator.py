"""A model of PyTorch's CUDACachingAllocator (c10/cuda/CUDACachingAllocator.cpp, torch 2.13).

Read from: DeviceCachingAllocator::malloc (search the pool, gc, alloc_block, then free one
oversize cached block and retry, then free every unsplit cached block and retry, then OOM),
alloc_found_block (split), free / free_block (merge with free neighbours), get_free_block (best fit
by (stream, size); oversize rules), should_split, alloc_block (per-process fraction, cudaMalloc or
expandable mapping), release_available_cached_blocks, release_cached_blocks / release_blocks,
unmap_block, garbage_collect_cached_blocks, find_expandable_block, map_block,
try_allocate_expandable_block, and NativeCachingAllocator::allocate (size 0 never reaches malloc;
>= 1 EiB raises at once). The version read is the stored pytorch/pytorch copy at 001074d plus the
2.13 config (AcceleratorAllocatorConfig: large_segment_size, max_non_split_rounding_size) whose
uses in get_allocation_size / get_free_block are quoted in public analyses of the current file.

Not modelled: CUDA graph private pools, multiple devices, cross-stream uses (record_stream events),
IPC, memory pools (torch.cuda.MemPool). Streams are plain ints: blocks are reused per stream only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from estimator.errors import MemcalError

from .alloc_blocks import Block, Pool, Request, Segment, growable, merge_into, splice_after
from .alloc_expandable import ExpandableMixin
from .alloc_reclaim import ReclaimMixin
from .alloc_config import (K_MIN_BLOCK_SIZE, K_SMALL_SIZE, AllocatorOptions, allocation_size,
                           format_size, round_size)

_ONE_EIB = 2**60


class OutOfMemory(RuntimeError):
    """The model's torch.OutOfMemoryError: the message has torch's shape, the numbers are attributes."""

    def __init__(self, message: str, alloc_bytes: int, allocated_bytes: int, reserved_bytes: int):
        super().__init__(message)
        self.alloc_bytes = alloc_bytes
        self.allocated_bytes = allocated_bytes
        self.reserved_bytes = reserved_bytes


@dataclass
class Stat:
    """c10 Stat: current and peak (peak resets to current)."""

    current: int = 0
    peak: int = 0

    def add(self, amount: int) -> None:
        self.current += amount
        self.peak = max(self.peak, self.current)


@dataclass
class Allocator(ExpandableMixin, ReclaimMixin):
    """One device's caching allocator. capacity_bytes: what cudaMalloc may take (None: unlimited)."""

    options: AllocatorOptions = field(default_factory=AllocatorOptions)
    capacity_bytes: int | None = None
    device_total_bytes: int | None = None

    def __post_init__(self) -> None:
        self.small, self.large = Pool(is_small=True), Pool(is_small=False)
        self.allocated, self.reserved, self.requested = Stat(), Stat(), Stat()
        self.num_alloc_retries = self.num_ooms = self.segment_count = 0
        self._handles: dict[int, Block | None] = {}
        self._next_handle = self._next_address = 0
        self._allowed = self._fraction_limit(self.options.per_process_memory_fraction)

    # ---- public API -------------------------------------------------------------------------
    @property
    def allocated_bytes(self) -> int:
        return self.allocated.current

    @property
    def max_allocated_bytes(self) -> int:
        return self.allocated.peak

    @property
    def reserved_bytes(self) -> int:
        return self.reserved.current

    @property
    def max_reserved_bytes(self) -> int:
        return self.reserved.peak

    def malloc(self, size: int, stream: int = 0) -> int:
        """Allocate `size` bytes on `stream`; returns a handle for free()."""
        if size < 0:
            raise MemcalError(f"cannot allocate a negative size: {size}")
        if size >= _ONE_EIB:
            raise OutOfMemory("CUDA out of memory. Tried to allocate more than 1EB memory.", size,
                              self.allocated.current, self.reserved.current)
        block = self._malloc(size, stream) if size else None
        self._next_handle += 1
        self._handles[self._next_handle] = block
        return self._next_handle

    def free(self, handle: int) -> None:
        block = self._handles.pop(handle, None)
        if block is not None:
            self._free(block)

    def empty_cache(self) -> None:
        """torch.cuda.empty_cache: release every cached segment that is entirely free."""
        self._release_cached_blocks()

    def set_memory_fraction(self, fraction: float) -> None:
        """torch.cuda.set_per_process_memory_fraction: cap reserved memory at fraction * device total."""
        if not 0.0 <= fraction <= 1.0:
            raise MemcalError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        self._allowed = self._fraction_limit(fraction)

    def set_options(self, options: AllocatorOptions) -> None:
        """torch.cuda.memory._set_allocator_settings: later requests follow the new options."""
        self.options = options
        if options.per_process_memory_fraction is not None:
            self.set_memory_fraction(options.per_process_memory_fraction)

    def reset_peak_stats(self) -> None:
        for stat in (self.allocated, self.reserved, self.requested):
            stat.peak = stat.current

    def replay(self, events) -> "Allocator":
        """Run ('alloc', id, size[, stream]) / ('free', id) / ('empty_cache',) events in order."""
        handles: dict = {}
        for event in events:
            kind = event[0]
            if kind == "alloc":
                handles[event[1]] = self.malloc(event[2], event[3] if len(event) > 3 else 0)
            elif kind == "free":
                self.free(handles.pop(event[1]))
            elif kind == "empty_cache":
                self.empty_cache()
            else:
                raise MemcalError(f"unknown allocator event {event!r}")
        return self

    # ---- malloc ---------------------------------------------------------------------------------
    def _malloc(self, orig_size: int, stream: int) -> Block:
        size = round_size(self.options, orig_size)
        pool = self.small if size <= K_SMALL_SIZE else self.large
        params = Request(size, stream, pool, allocation_size(self.options, size))
        block = self._get_free_block(params)
        if block is None:
            if self._allowed is not None and self.options.garbage_collection_threshold > 0.0:
                self._garbage_collect()
            block = (self._alloc_block(params)
                     or (self._release_available_cached_blocks(params) and self._alloc_block(params))
                     or (self._release_cached_blocks() and self._alloc_block(params, retry=True)))
        if block is None:
            self._raise_oom(params)
        return self._alloc_found_block(block, params, orig_size)

    def _get_free_block(self, p: Request) -> Block | None:
        pool = p.pool
        if self._allowed is not None and self.options.garbage_collection_threshold > 0.0:
            pool.free_blocks_calls += 1
        index = pool.lower_bound(p.stream, p.size)
        block = pool.at(index)
        if block is None or block.stream != p.stream:
            return None
        if block.expandable:
            block = self._expandable_choice(pool, index, p.stream)
            if block is None:
                return None
        if p.size < self.options.max_split_size_bytes <= block.size:
            return None  # do not return an oversize block for a smaller request
        if p.size >= self.options.max_split_size_bytes and \
                block.size >= p.size + self.options.max_non_split_rounding_bytes:
            return None  # an oversize block may be rounded up, but only within a limit
        pool.remove(block)
        return block

    def _expandable_choice(self, pool: Pool, index: int, stream: int) -> Block | None:
        """Best fit counts an expandable block as big as it could grow (its unmapped tail)."""
        block = pool.at(index)
        if not self.options.expandable_segments:
            while block is not None and block.stream == stream and block.expandable:
                index += 1
                block = pool.at(index)
            return block if block is not None and block.stream == stream else None
        nxt = pool.at(index + 1)
        while block.expandable and nxt is not None and nxt.stream == stream and growable(nxt) < growable(block):
            index += 1
            block, nxt = nxt, pool.at(index + 1)
        return block

    def _alloc_found_block(self, block: Block, p: Request, orig_size: int) -> Block:
        if self._should_split(block, p.size):
            rest = Block(block.segment, block.ptr + p.size, block.size - p.size, mapped=True)
            block.size = p.size
            splice_after(block, rest)
            p.pool.insert(rest)
        block.allocated, block.requested_bytes = True, orig_size
        self.allocated.add(block.size)
        self.requested.add(orig_size)
        return block

    def _should_split(self, block: Block, size: int) -> bool:
        remaining = block.size - size
        if block.segment.pool.is_small or self.options.expandable_segments:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self.options.max_split_size_bytes and remaining > K_SMALL_SIZE

    # ---- new memory ------------------------------------------------------------------------------
    def _alloc_block(self, p: Request, retry: bool = False) -> Block | None:
        if retry:
            self.num_alloc_retries += 1
        if self._allowed is not None and self.reserved.current + p.alloc_bytes > self._allowed:
            return None
        if self.options.expandable_segments:
            return self._alloc_expandable(p)
        if not self._fits(p.alloc_bytes):
            return None
        segment = self._new_segment(p.pool, p.stream, p.alloc_bytes, expandable=False)
        self.reserved.add(p.alloc_bytes)
        self.segment_count += 1
        return Block(segment, segment.base, p.alloc_bytes)

    def _fits(self, extra: int) -> bool:
        return self.capacity_bytes is None or self.reserved.current + extra <= self.capacity_bytes

    def _new_segment(self, pool: Pool, stream: int, size: int, expandable: bool, page: int = 0) -> Segment:
        segment = Segment(self._next_address, pool, stream, expandable, page)
        self._next_address += size
        return segment

    # ---- free -----------------------------------------------------------------------------------
    def _free(self, block: Block) -> None:
        block.allocated = False
        self.allocated.add(-block.size)
        self.requested.add(-block.requested_bytes)
        self._merge_neighbours(block)
        block.segment.pool.insert(block)

    def _merge_neighbours(self, block: Block) -> None:
        for other in (block.prev, block.next):
            if other is not None and not other.allocated and other.mapped == block.mapped:
                pool = other.segment.pool
                pool.remove(other) if other.mapped else pool.drop_unmapped(other)
                merge_into(block, other)

    # ---- helpers --------------------------------------------------------------------------------
    def _fraction_limit(self, fraction: float | None) -> int | None:
        if fraction is None:
            return None
        total = self.device_total_bytes or self.capacity_bytes
        if total is None:
            raise MemcalError("a memory fraction needs device_total_bytes or capacity_bytes")
        return int(fraction * total)

    def _raise_oom(self, p: Request) -> None:
        self.num_ooms += 1
        total = self.device_total_bytes or self.capacity_bytes or 0
        free = max((self.capacity_bytes or total) - self.reserved.current, 0)
        allowed = f"{format_size(self._allowed)} allowed; " if self._allowed is not None else ""
        allocated, reserved = self.allocated.current, self.reserved.current
        message = (f"CUDA out of memory. Tried to allocate {format_size(p.alloc_bytes)}. GPU 0 has a total capacity "
                   f"of {format_size(total)} of which {format_size(free)} is free. {allowed}Of the allocated memory "
                   f"{format_size(allocated)} is allocated by PyTorch, and {format_size(reserved - allocated)} is "
                   "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
                   "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
                   "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
        raise OutOfMemory(message, p.alloc_bytes, allocated, reserved)
