"""cuBLAS / cuBLASLt workspace sizes (estimator/cuda/workspaces.py) against CublasHandlePool.cpp and
test_cuda.py test_cublas_workspace_explicit_allocation."""
import pytest

from estimator.cuda import Allocator
from estimator.cuda.gpus import get_gpu
from estimator.cuda.workspaces import (
    compute_capability,
    cublas_workspace_bytes,
    cublaslt_workspace_bytes,
    workspace_allocations,
)
from estimator.errors import MemcalError

KiB, MiB = 2**10, 2**20


@pytest.mark.parametrize("arch, expected", [
    ((8, 0), 4096 * 2 * 1024 + 16 * 8 * 1024),  # test_cublas_workspace_explicit_allocation: ":4096:2:16:8"
    ((9, 0), 4096 * 8 * 1024),  # "different size (32 MiB) expected on Hopper GPU" (capability == (9, 0))
    ((10, 0), 4096 * 2 * 1024 + 16 * 8 * 1024),  # only exactly sm_90 gets 32 MiB
    ((8, 9), 8519680), ((7, 5), 8519680),
])
def test_default_cublas_workspace(arch, expected):
    assert cublas_workspace_bytes(arch) == expected


@pytest.mark.parametrize("config, expected", [
    ("", 8519680), ("-1", 8519680),  # "check default with bad user config"
    (":128:8:64:16:32:32", 3072 * 1024),  # "check valid config"
    (":4096:8", 32 * MiB), (":16:8", 128 * KiB),
])
def test_cublas_workspace_config(config, expected):
    assert cublas_workspace_bytes((8, 0), {"CUBLAS_WORKSPACE_CONFIG": config}) == expected


def test_cublaslt_workspace_defaults_to_1mib_and_is_capped_by_cublas():
    assert cublaslt_workspace_bytes((9, 0)) == 1 * MiB
    small_cublas = {"CUBLAS_WORKSPACE_CONFIG": ":16:8", "CUBLASLT_WORKSPACE_SIZE": "4096"}
    assert cublaslt_workspace_bytes((9, 0), small_cublas) == 128 * KiB  # capped: unified unset counts as on
    assert cublaslt_workspace_bytes((9, 0), {**small_cublas, "TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}) == 4 * MiB
    assert cublaslt_workspace_bytes((9, 0), {"CUBLASLT_WORKSPACE_SIZE": "oops"}) == 1 * MiB


def test_workspace_allocations_on_the_first_matmul():
    assert workspace_allocations("sm_80") == [8519680]
    assert workspace_allocations("sm_90", cublaslt=True) == [32 * MiB, 1 * MiB]
    assert workspace_allocations("sm_90", {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "1"}, cublaslt=True) == [32 * MiB]
    assert workspace_allocations(get_gpu("A100"), streams=2) == [8519680, 8519680]
    assert workspace_allocations("8.0", {"CUBLAS_WORKSPACE_CONFIG": ":0:0"}) == []


def test_workspaces_are_caching_allocator_blocks():
    # the default 8.125 MiB workspace is a large-pool request < 10 MiB: a 20 MiB segment; the 1 MiB
    # cuBLASLt workspace is a small-pool request (<= 1 MiB): a 2 MiB segment
    a = Allocator()
    for size in workspace_allocations((8, 0), cublaslt=True):
        a.malloc(size)
    assert (a.allocated_bytes, a.reserved_bytes) == (8519680 + MiB, 22 * MiB)


@pytest.mark.parametrize("arch, cc", [("sm_90", (9, 0)), ("sm_100", (10, 0)), ("12.1", (12, 1)), ((8, 6), (8, 6))])
def test_compute_capability_spellings(arch, cc):
    assert compute_capability(arch) == cc


def test_bad_architecture_is_one_line_error():
    with pytest.raises(MemcalError, match="not a GPU architecture"):
        compute_capability("hopper")
