"""How the allocator model gives cached memory back: before a retry, on empty_cache, and by gc.

c10/cuda/CUDACachingAllocator.cpp: release_available_cached_blocks (with max_split_size set: free the
smallest cached oversize block that covers the request, else oversize blocks from the largest down),
release_cached_blocks / release_blocks (free every cached block that is a whole segment; unmap the
wholly free pages of expandable segments, unmap_block), garbage_collect_cached_blocks (with a memory
fraction and garbage_collection_threshold: free unsplit large blocks whose age, counted in free-block
lookups, is at least the average, until reserved memory is below threshold * allowed).
"""
from __future__ import annotations

from .alloc_blocks import Block, Request, ceil_to, splice_after, whole


class ReclaimMixin:
    """Methods of Allocator that return cached memory to the device."""

    def _release_available_cached_blocks(self, p: Request) -> bool:
        """Free one cached oversize block big enough, else the largest oversize ones, then retry."""
        if not self.options.limits_split:
            return False
        key = max(p.size, self.options.max_split_size_bytes)
        candidates = [b for b in p.pool.blocks() if b.stream == p.stream and whole(b)
                      and b.size >= self.options.max_split_size_bytes]
        bigger = [b for b in candidates if b.size >= key]
        if bigger:
            self._release_segment(bigger[0])
            return True
        released = 0
        for block in reversed(candidates):
            if released >= key:
                break
            released += block.size
            self._release_segment(block)
        return released >= key

    def _release_cached_blocks(self) -> bool:
        """release_cached_blocks: free every unsplit cached segment; unmap free expandable pages."""
        for pool in (self.large, self.small):
            expandable = [b for b in pool.blocks() if b.expandable]
            for block in pool.blocks():
                if whole(block):
                    self._release_segment(block)
            for block in expandable:
                self._unmap_block(block)
        return True

    def _release_segment(self, block: Block) -> None:
        block.segment.pool.remove(block)
        self.reserved.add(-block.size)
        self.segment_count -= 1

    def _unmap_block(self, block: Block) -> None:
        page = block.segment.page_bytes
        base = block.segment.base
        begin = base + ceil_to(block.ptr - base, page)
        end = base + (block.ptr + block.size - base) // page * page
        if begin >= end:
            return
        pool = block.segment.pool
        pool.remove(block)
        for lo, hi in ((block.ptr, begin), (end, block.ptr + block.size)):
            if hi > lo:
                self._carve_free(block, lo, hi)
        block.ptr, block.size, block.mapped = begin, end - begin, False
        self.reserved.add(-(end - begin))
        self._merge_neighbours(block)
        if block.prev is None and block.next is None:
            return  # the whole segment is unmapped: release_expandable_segment drops it
        pool.add_unmapped(block)

    def _carve_free(self, block: Block, lo: int, hi: int) -> None:
        """Split a still-mapped free piece [lo, hi) off an expandable block being unmapped."""
        piece = Block(block.segment, lo, hi - lo)
        if lo == block.ptr:
            piece.prev, piece.next = block.prev, block
            if block.prev is not None:
                block.prev.next = piece
            block.prev = piece
        else:
            splice_after(block, piece)
        block.segment.pool.insert(piece)

    def _garbage_collect(self) -> None:
        """garbage_collect_cached_blocks: free old unsplit large blocks down to the threshold."""
        threshold = int(self.options.garbage_collection_threshold * self._allowed)
        if self.reserved.current <= threshold:
            return
        target, reclaimed = self.reserved.current - threshold, 0
        pool = self.large
        freeable = [b for b in pool.blocks() if whole(b)]
        total_age = sum(pool.free_blocks_calls - b.gc_base for b in freeable)
        freed = True
        while reclaimed < target and freed and freeable:
            age_threshold, freed = total_age / len(freeable), False
            for block in list(freeable):
                age = pool.free_blocks_calls - block.gc_base
                if age >= age_threshold:
                    freed, reclaimed, total_age = True, reclaimed + block.size, total_age - age
                    freeable.remove(block)
                    self._release_segment(block)
