"""Expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) for the allocator model.

c10/cuda/CUDACachingAllocator.cpp, Note [Expandable Segments]: one segment per stream and pool reserves
address space for 1 1/8 of the device's memory and maps physical pages on demand, 2 MiB pages for the
small pool and large_segment_size (20 MiB) pages for the large pool. find_expandable_block takes the
lowest address where free + unmapped space fits the request, map_block maps whole pages and merges
the result with free neighbours, try_allocate_expandable_block maps until the candidate is big enough.
"""
from __future__ import annotations

from .alloc_blocks import Block, Request, ceil_to, room, splice_after
from .alloc_config import K_SMALL_BUFFER

ADDRESS_SPACE_DEFAULT = 2**44  # an expandable segment's reserved range when no device total is known


class ExpandableMixin:
    """Methods of Allocator that grow expandable segments (they use its state and helpers)."""

    def _alloc_expandable(self, p: Request) -> Block | None:
        """try_allocate_expandable_block: map pages at the lowest address where `size` fits."""
        candidate = self._find_expandable_block(p)
        if not candidate.mapped:
            candidate = self._map_block(candidate, min(candidate.size, p.size))
            if candidate is None:
                return None
        while candidate.size < p.size:
            following = candidate.next
            candidate = self._map_block(following, min(p.size - candidate.size, following.size))
            if candidate is None:
                return None
        p.pool.remove(candidate)
        return candidate

    def _find_expandable_block(self, p: Request) -> Block:
        for block in p.pool.unmapped(p.stream):
            start = block.prev if block.prev is not None and block.prev.free_mapped else block
            if room(start) >= p.size:
                return start
        page = K_SMALL_BUFFER if p.pool.is_small else self.options.large_segment_size_bytes
        total = self.device_total_bytes or self.capacity_bytes
        span = ceil_to(total + total // 8, page) if total else ADDRESS_SPACE_DEFAULT
        segment = self._new_segment(p.pool, p.stream, span, expandable=True, page=page)
        block = Block(segment, segment.base, span, mapped=False)
        p.pool.add_unmapped(block)
        return block

    def _map_block(self, block: Block, size: int) -> Block | None:
        """map_block: back [ptr, ptr + size) with whole pages, then merge with free neighbours."""
        mapped = ceil_to(size, block.segment.page_bytes)
        if not self._fits(mapped):
            return None
        pool = block.segment.pool
        pool.drop_unmapped(block)
        if mapped < block.size:
            rest = Block(block.segment, block.ptr + mapped, block.size - mapped, mapped=False)
            splice_after(block, rest)
            pool.add_unmapped(rest)
            block.size = mapped
        block.mapped = True
        self._merge_neighbours(block)
        pool.insert(block)
        self.reserved.add(mapped)
        return block
