"""Blocks, segments and the size-ordered free list of the caching-allocator model.

Mirrors the structures of c10/cuda/CUDACachingAllocator.cpp (torch 2.13): a Block is a slice of a
segment (prev/next neighbours in address order), `BlockPool.blocks` is a std::set ordered by
BlockComparatorSize = (stream, size, ptr), `BlockPool.unmapped` (expandable segments only) by
BlockComparatorAddress = (stream, ptr). Addresses are synthetic: each segment gets the next free
range of a counter, so ties between equal-sized blocks break by allocation order.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(eq=False)
class Segment:
    """One cudaMalloc (or one expandable segment's reserved address range)."""

    base: int
    pool: "Pool"
    stream: int
    expandable: bool
    page_bytes: int = 0


@dataclass(eq=False)
class Block:
    """A slice [ptr, ptr + size) of a segment: allocated, free (cached) or, if expandable, unmapped."""

    segment: Segment
    ptr: int
    size: int
    allocated: bool = False
    mapped: bool = True
    requested_bytes: int = 0
    gc_base: int = 0
    prev: "Block | None" = None
    next: "Block | None" = None

    @property
    def stream(self) -> int:
        return self.segment.stream

    @property
    def expandable(self) -> bool:
        return self.segment.expandable

    @property
    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    @property
    def free_mapped(self) -> bool:
        return not self.allocated and self.mapped

    def key(self) -> tuple[int, int, int]:
        return (self.stream, self.size, self.ptr)


@dataclass(eq=False)
class Pool:
    """BlockPool: the free mapped blocks by (stream, size, ptr) and the unmapped ones by address."""

    is_small: bool
    free_blocks_calls: int = 0
    _keys: list = field(default_factory=list)
    _by_key: dict = field(default_factory=dict)
    _unmapped: list = field(default_factory=list)

    def insert(self, block: Block) -> None:
        """BlockPool::insert_into_blocks: cache a free block and stamp its gc age base."""
        block.gc_base = self.free_blocks_calls
        key = block.key()
        bisect.insort(self._keys, key)
        self._by_key[key] = block

    def remove(self, block: Block) -> None:
        key = block.key()
        del self._by_key[key]
        self._keys.pop(bisect.bisect_left(self._keys, key))

    def lower_bound(self, stream: int, size: int) -> int:
        return bisect.bisect_left(self._keys, (stream, size, -1))

    def at(self, index: int) -> Block | None:
        return self._by_key[self._keys[index]] if 0 <= index < len(self._keys) else None

    def blocks(self) -> list[Block]:
        return [self._by_key[key] for key in self._keys]

    def add_unmapped(self, block: Block) -> None:
        bisect.insort(self._unmapped, (block.stream, block.ptr, id(block), block))

    def drop_unmapped(self, block: Block) -> None:
        self._unmapped.remove((block.stream, block.ptr, id(block), block))

    def unmapped(self, stream: int) -> list[Block]:
        return [entry[3] for entry in self._unmapped if entry[0] == stream]


@dataclass
class Request:
    """One malloc after rounding: block size, stream, pool and the segment size a new cudaMalloc takes."""

    size: int
    stream: int
    pool: Pool
    alloc_bytes: int


def splice_after(block: Block, new: Block) -> None:
    """Insert `new` right after `block` in the segment's address order."""
    new.prev, new.next = block, block.next
    if block.next is not None:
        block.next.prev = new
    block.next = new


def merge_into(dst: Block, src: Block | None) -> int:
    """try_merge_blocks: absorb a free neighbour of the same mapped state; returns its size or 0."""
    if src is None or src.allocated or src.mapped != dst.mapped:
        return 0
    if dst.prev is src:
        dst.ptr, dst.prev = src.ptr, src.prev
        if src.prev is not None:
            src.prev.next = dst
    else:
        dst.next = src.next
        if src.next is not None:
            src.next.prev = dst
    dst.size += src.size
    return src.size


def whole(block: Block) -> bool:
    """A cached block that is its whole (non-expandable) segment: cudaFree can return it."""
    return not block.is_split and not block.expandable


def growable(block: Block) -> int:
    """get_free_block's expandable_size: the block plus the unmapped range right after it."""
    nxt = block.next
    return block.size + (nxt.size if nxt is not None and not nxt.mapped else 0)


def room(block: Block | None) -> int:
    """find_expandable_block's has_available_address_space: free or unmapped bytes from here on."""
    room = 0
    while block is not None and not block.allocated:
        room += block.size
        block = block.next
    return room




def ceil_to(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple
