"""Known answers for the caching-allocator model (estimator/cuda/allocator.py).

Two kinds: scenarios computed by hand from the rules of c10/cuda/CUDACachingAllocator.cpp, and the
numeric expectations of PyTorch's own tests in test/test_cuda.py (stored version 000e43cd, main
after the torch.accelerator memory API), each named after the test it reproduces.
"""
import pytest

from estimator.cuda import (
    Allocator,
    AllocatorOptions,
    OutOfMemory,
    allocation_size,
    format_size,
    parse_alloc_conf,
    round_size,
)
from estimator.errors import MemcalError

KiB, MiB, GiB = 2**10, 2**20, 2**30
DEFAULT = AllocatorOptions()


def power2_div(size, div_factor):
    """test_cuda.py test_allocator_settings: the expected size of a roundup_power2_divisions block."""
    pow2 = 1
    while pow2 < size:
        pow2 = pow2 * 2
    if pow2 == size:
        return pow2
    step = pow2 / 2 / div_factor
    ret = pow2 / 2
    while ret < size:
        ret = ret + step
    return ret


# ---- size rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes, block_bytes", [
    (1, 512), (511, 512), (512, 512), (513, 1024), (4096, 4096), (1 * MiB + 1, 1 * MiB + 512),
])
def test_round_size_to_512(request_bytes, block_bytes):
    assert round_size(DEFAULT, request_bytes) == block_bytes


@pytest.mark.parametrize("block_bytes, segment_bytes", [
    (512, 2 * MiB), (1 * MiB, 2 * MiB),  # <= kSmallSize: a 2 MiB small segment
    (1 * MiB + 512, 20 * MiB), (10 * MiB - 512, 20 * MiB),  # < kMinLargeAlloc: a 20 MiB segment
    (10 * MiB, 10 * MiB), (12 * MiB, 12 * MiB), (11 * MiB + 512, 12 * MiB),  # else: rounded up to 2 MiB
])
def test_allocation_size(block_bytes, segment_bytes):
    assert allocation_size(DEFAULT, block_bytes) == segment_bytes


def test_format_size_as_c10_prints_it():
    assert [format_size(n) for n in (1024, 1025, MiB, MiB + 1, 3 * GiB // 2)] == \
        ["1024 bytes", "1.00 KiB", "1024.00 KiB", "1.00 MiB", "1.50 GiB"]


# ---- hand-computed scenarios ----------------------------------------------------------------------

def test_small_pool_packs_small_tensors_into_one_2mib_segment():
    a = Allocator()
    for size in (4096, 4096, 100, 700 * KiB, 1 * MiB - 200 * KiB):
        a.malloc(size)
    # blocks: 4096 + 4096 + 512 + 716800 + 843776 = 1569280 bytes, all in one 2 MiB segment
    assert (a.allocated_bytes, a.reserved_bytes, a.segment_count) == (1569280, 2 * MiB, 1)
    a.malloc(600 * KiB)  # 614400 > the 527872 bytes left: a second small segment
    assert (a.reserved_bytes, a.segment_count) == (4 * MiB, 2)


def test_a_20mib_segment_split_between_two_8mib_tensors_and_reused_after_free():
    a = Allocator()
    x = a.malloc(8 * MiB)  # 20 MiB segment: 8 MiB block + 12 MiB free remainder (> 1 MiB: split)
    y = a.malloc(8 * MiB)  # best fit: the 12 MiB remainder, split again (4 MiB left)
    assert (a.allocated_bytes, a.reserved_bytes, a.segment_count) == (16 * MiB, 20 * MiB, 1)
    a.free(x)
    a.malloc(8 * MiB)  # the freed 8 MiB block, no new segment
    assert (a.allocated_bytes, a.max_allocated_bytes, a.reserved_bytes) == (16 * MiB, 16 * MiB, 20 * MiB)
    a.malloc(5 * MiB)  # 4 MiB left is too small: a new 20 MiB segment
    assert a.reserved_bytes == 40 * MiB
    a.free(y)
    a.empty_cache()  # both segments still hold a live block: nothing to release
    assert a.reserved_bytes == 40 * MiB


def test_a_12mib_request_gets_its_own_12mib_segment_not_split():
    a = Allocator()
    h = a.malloc(12 * MiB)
    b = a.malloc(11 * MiB + 1)  # 11 MiB + 512 -> a 12 MiB segment; 1 MiB - 512 left (<= 1 MiB: no split)
    assert (a.allocated_bytes, a.reserved_bytes) == (24 * MiB, 24 * MiB)  # the block keeps all 12 MiB
    a.free(h)
    a.free(b)
    a.empty_cache()
    assert a.reserved_bytes == 0


def test_remainder_of_1mib_or_less_is_not_split_in_the_large_pool():
    a = Allocator()
    a.malloc(19 * MiB)  # >= 10 MiB: a 20 MiB (2 MiB-rounded) segment; the 1 MiB left is not split off
    assert a.allocated_bytes == 20 * MiB and a.reserved_bytes == 20 * MiB
    a.malloc(1 * MiB + 512)  # the 1 MiB tail was not split off: a new 20 MiB segment
    assert a.reserved_bytes == 40 * MiB


def test_free_and_retry_releases_cached_segments_of_another_stream():
    a = Allocator(capacity_bytes=40 * MiB)
    a.free(a.malloc(30 * MiB, stream=1))  # cached on stream 1, useless for stream 0
    a.malloc(20 * MiB, stream=0)  # cudaMalloc fails (50 > 40), release_cached_blocks, retry
    assert (a.reserved_bytes, a.max_reserved_bytes, a.num_alloc_retries) == (20 * MiB, 30 * MiB, 1)


def test_oom_when_nothing_can_be_released_with_torchs_message():
    a = Allocator(capacity_bytes=40 * MiB)
    a.malloc(30 * MiB)
    with pytest.raises(OutOfMemory) as error:
        a.malloc(20 * MiB)
    assert str(error.value).startswith(
        "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 40.00 MiB of which "
        "10.00 MiB is free. Of the allocated memory 30.00 MiB is allocated by PyTorch, and 0 bytes is reserved "
        "by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    assert (error.value.alloc_bytes, a.num_ooms, a.num_alloc_retries) == (20 * MiB, 1, 1)


def test_max_split_size_keeps_oversize_blocks_whole():
    a = Allocator(parse_alloc_conf("max_split_size_mb:40"))
    a.free(a.malloc(50 * MiB))  # an oversize cached block (>= 40 MiB)
    small = a.malloc(30 * MiB)  # below max_split: may not take the oversize block -> new segment
    assert a.reserved_bytes == 80 * MiB
    a.malloc(45 * MiB)  # >= max_split and 50 < 45 + 20 (max_non_split_rounding): reuse whole, unsplit
    assert (a.allocated_bytes, a.reserved_bytes) == (80 * MiB, 80 * MiB)
    a.free(small)
    a.malloc(65 * MiB)  # the cached 30 MiB block is too small: a new 66 MiB (2 MiB-rounded) segment
    assert a.reserved_bytes == 146 * MiB


def test_max_split_size_frees_oversize_blocks_before_retrying():
    a = Allocator(parse_alloc_conf("max_split_size_mb:40"), capacity_bytes=100 * MiB)
    a.free(a.malloc(50 * MiB))
    a.malloc(30 * MiB)
    a.malloc(60 * MiB)  # 50 + 30 + 60 > 100: release_available_cached_blocks frees the 50 MiB block
    assert (a.reserved_bytes, a.allocated_bytes) == (90 * MiB, 90 * MiB)


def test_expandable_segments_grow_one_segment_in_20mib_pages():
    a = Allocator(parse_alloc_conf("expandable_segments:True"), capacity_bytes=80 * GiB)
    handles = [a.malloc(30 * MiB) for _ in range(3)]
    # 30 -> map 40 (2 pages, 10 left free); 30 -> 10 free + 1 new page; 30 -> 2 more pages (10 left)
    assert (a.allocated_bytes, a.reserved_bytes) == (90 * MiB, 100 * MiB)
    for h in handles:
        a.free(h)
    a.malloc(90 * MiB)  # the one 100 MiB free block, split (expandable: any remainder >= 512 B)
    assert (a.allocated_bytes, a.reserved_bytes) == (90 * MiB, 100 * MiB)


def test_expandable_segments_small_pool_pages_are_2mib_and_unmapped_by_empty_cache():
    a = Allocator(parse_alloc_conf("expandable_segments:True"), capacity_bytes=80 * GiB)
    handles = [a.malloc(600 * KiB) for _ in range(5)]  # 3000 KiB -> 2 small pages
    assert a.reserved_bytes == 4 * MiB
    for h in handles[2:]:
        a.free(h)
    a.empty_cache()  # live blocks end at 1200 KiB: the second page is wholly free -> unmapped
    assert a.reserved_bytes == 2 * MiB


def test_non_expandable_reserves_three_segments_where_expandable_tiles_one():
    plain = Allocator()
    for _ in range(3):
        plain.malloc(30 * MiB)
    assert (plain.reserved_bytes, plain.segment_count) == (90 * MiB, 3)


def test_per_process_fraction_from_the_conf_string():
    a = Allocator(parse_alloc_conf("per_process_memory_fraction:0.5"), device_total_bytes=1000 * MiB)
    a.malloc(480 * MiB)
    with pytest.raises(OutOfMemory, match="500.00 MiB allowed"):
        a.malloc(30 * MiB)


def test_garbage_collection_frees_only_blocks_of_at_least_average_age():
    a = Allocator(parse_alloc_conf("garbage_collection_threshold:0.5"), device_total_bytes=200 * MiB)
    a.set_memory_fraction(1.0)  # gc runs only with a fraction set (set_fraction in the C++)
    a.free(a.malloc(60 * MiB))  # lookup 1; cached with age base 1
    a.free(a.malloc(70 * MiB))  # lookup 2 misses the 60 MiB block; cached with age base 2
    a.malloc(120 * MiB)  # lookup 3 misses; reserved 130 > 0.5 * 200: ages 2 and 1, average 1.5
    # gc frees the 60 MiB block only (age 2 >= 1.5, and 60 >= the 30 MiB target), keeps the 70 MiB one
    assert (a.reserved_bytes, a.num_alloc_retries) == (190 * MiB, 0)


def test_without_garbage_collection_the_same_run_frees_everything_on_retry():
    a = Allocator(device_total_bytes=200 * MiB)
    a.set_memory_fraction(1.0)
    a.free(a.malloc(60 * MiB))
    a.free(a.malloc(70 * MiB))
    a.malloc(120 * MiB)  # 130 + 120 > 200: release_cached_blocks frees both, then the retry succeeds
    assert (a.reserved_bytes, a.num_alloc_retries) == (120 * MiB, 1)


def test_zero_size_requests_never_reach_the_allocator():
    a = Allocator()
    a.free(a.malloc(0))
    assert (a.allocated_bytes, a.reserved_bytes) == (0, 0)


def test_replay_events():
    a = Allocator().replay([("alloc", "x", 8 * MiB), ("alloc", "y", 4096, 1), ("free", "x"),
                            ("alloc", "z", 6 * MiB), ("empty_cache",)])
    assert (a.allocated_bytes, a.max_allocated_bytes, a.reserved_bytes) == (6 * MiB + 4096, 8 * MiB + 4096,
                                                                            22 * MiB)
    with pytest.raises(MemcalError):
        Allocator().replay([("resize", "x")])


# ---- PYTORCH_CUDA_ALLOC_CONF -------------------------------------------------------------------------

def test_parse_alloc_conf_keys():
    options = parse_alloc_conf("max_split_size_mb:100, garbage_collection_threshold:0.6,expandable_segments:True,"
                               "roundup_power2_divisions:[64:8,256:4,1024:4,>:1],backend:native")
    assert options.max_split_size_bytes == 100 * MiB
    assert options.garbage_collection_threshold == 0.6 and options.expandable_segments
    assert options.roundup_power2_divisions == (8,) * 7 + (0, 4, 0, 4) + (1,) * 5


def test_large_segment_size_sets_the_non_split_rounding_default():
    options = parse_alloc_conf("large_segment_size_mb:64")
    assert (options.large_segment_size_bytes, options.max_non_split_rounding_bytes) == (64 * MiB, 64 * MiB)
    assert allocation_size(options, 2 * MiB) == 64 * MiB


@pytest.mark.parametrize("text", [
    "foo:1,bar:2", "garbage_collection_threshold:1.2", "max_split_size_mb:2", "expandable_segments:true",
    "roundup_power2_divisions:3", "large_segment_size_mb:8", "per_process_memory_fraction:1.1",
])
def test_parse_alloc_conf_rejects_what_torch_rejects(text):
    # the ValueErrors of test_allocator_settings (first three) and the checks of AllocatorConfig.cpp
    with pytest.raises(MemcalError):
        parse_alloc_conf(text)


# ---- PyTorch's own tests, test/test_cuda.py ------------------------------------------------------------

def test_torch_test_allocator_settings():
    nbytes, nbytes_big = 4 * 21 * MiB, 4 * 100 * MiB
    a = Allocator()
    start = a.allocated_bytes
    a.malloc(nbytes)
    assert a.allocated_bytes - start == nbytes
    a.set_options(parse_alloc_conf("roundup_power2_divisions:4"))
    reg = a.allocated_bytes
    a.malloc(nbytes)
    assert a.allocated_bytes - reg == power2_div(nbytes, 4) == 96 * MiB
    a.set_options(parse_alloc_conf("garbage_collection_threshold:0.5,max_split_size_mb:40"))
    start = a.allocated_bytes
    a.malloc(nbytes)  # parseArgs reset the divisions
    assert a.allocated_bytes - start == nbytes
    a.set_options(parse_alloc_conf(
        "garbage_collection_threshold:0.5,roundup_power2_divisions:[64:8,128:2,256:2,512:2,1024:1,>:1]"))
    start = a.allocated_bytes
    a.malloc(nbytes)
    assert a.allocated_bytes - start == power2_div(nbytes, 8) == 88 * MiB
    start = a.allocated_bytes
    a.malloc(nbytes_big)
    assert a.allocated_bytes - start == power2_div(nbytes_big, 2) == 512 * MiB


def test_torch_test_memory_stats():
    a = Allocator()
    tmp = a.malloc(256 * 4)  # torch.randn(256): 1 kB active
    assert a.allocated_bytes == 1024
    a.free(tmp)
    a.empty_cache()
    a.reset_peak_stats()
    assert (a.allocated_bytes, a.max_allocated_bytes, a.max_reserved_bytes) == (0, 0, 0)


def test_torch_test_out_of_memory():
    a = Allocator(capacity_bytes=80 * GiB)
    a.malloc(1024 * 4)
    with pytest.raises(OutOfMemory, match=r"Tried to allocate 800000000\.00 GiB\. GPU 0 has a total capacity of"):
        a.malloc(1024 * 1024 * 1024 * 800000000)
    with pytest.raises(OutOfMemory, match="Tried to allocate more than 1EB memory"):
        a.malloc(1024 * 1024 * 1024 * 8000000000)


def test_torch_test_out_of_memory_retry():
    total = 80 * GiB
    a = Allocator(capacity_bytes=total - 500 * MiB, device_total_bytes=total)  # minus a CUDA context
    size = int(total * 0.5)
    first = a.malloc(size)
    with pytest.raises(OutOfMemory, match="Tried to allocate"):
        a.malloc(size)
    a.free(first)
    a.malloc(size)


def test_torch_test_set_per_process_memory_fraction():
    total = 85_520_809_984  # an H100's total
    a = Allocator(capacity_bytes=total, device_total_bytes=total)
    a.malloc(1024 * 4)  # tensor = torch.zeros(1024)
    a.empty_cache()
    a.set_memory_fraction(0.5)
    tmp = a.malloc(int(total * 0.499) - a.max_reserved_bytes)  # "test 0.499 allocation is ok"
    a.free(tmp)
    a.empty_cache()
    with pytest.raises(OutOfMemory, match="out of memory"):
        a.malloc(int(total * 0.5))


def test_torch_test_max_split_expandable():
    a = Allocator(capacity_bytes=80 * GiB, device_total_bytes=80 * GiB)
    a.set_memory_fraction(120 * MiB / (80 * GiB))

    def alloc(n, expandable):
        a.set_options(parse_alloc_conf(f"expandable_segments:{expandable},max_split_size_mb:40"))
        return a.malloc(n * MiB)

    handles = [alloc(40, False), alloc(40, True), alloc(40, False)]
    with pytest.raises(OutOfMemory):
        alloc(40, False)
    for h in handles:
        a.free(h)
    alloc(120, False)  # release_cached_blocks runs with an expandable segment in the free list
    assert a.reserved_bytes == 120 * MiB


def test_torch_memory_stats_generator_sequence():
    """_test_memory_stats_generator: allocated rises with each allocation, falls with each free, a
    0-element tensor changes nothing, and freeing everything returns to the start (m1, m0)."""
    a = Allocator()
    m0 = a.allocated_bytes
    def alloc(*shape):  # torch.cuda.FloatTensor(*size)
        return a.malloc(4 * _numel(shape))
    tensors1 = [alloc(1), alloc(10, 20), alloc(200, 300, 2000)]
    m1 = a.allocated_bytes
    assert m1 > m0
    tensors2 = []
    for i in range(1, 18):
        before = a.allocated_bytes
        tensors2.append(alloc(i, i * 4))
        assert a.allocated_bytes > before
    for i in range(5, 22):
        before = a.allocated_bytes
        tensors2.append(alloc(i, i * 7, i * 9, i * 11))
        assert a.allocated_bytes > before
    before = a.allocated_bytes
    tensors2.append(alloc(0, 0, 0))
    assert a.allocated_bytes == before
    for h in tensors2:
        a.free(h)
    assert a.allocated_bytes == m1
    reserved = a.reserved_bytes
    for h in tensors1:
        a.free(h)
    assert (a.allocated_bytes, a.reserved_bytes) == (m0, reserved)
    a.empty_cache()
    assert a.reserved_bytes == 0


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n
