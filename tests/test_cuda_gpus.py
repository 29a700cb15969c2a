"""GPU profiles (estimator/cuda/gpus.py): lookup, the table's facts, custom profiles."""
import json

import pytest

from estimator.cuda.gpus import GPUS, get_gpu, gpu_from_dict, gpu_names, load_gpu
from estimator.cuda.workspaces import default_cublas_workspace_bytes
from estimator.errors import MemcalError

MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize("name, canonical", [
    ("h100", "H100-80GB"), ("H100-80GB", "H100-80GB"), ("NVIDIA H100 80GB HBM3", "H100-80GB"),
    ("nvidia a100-sxm4-80gb", "A100-80GB"), ("A100 40GB", "A100-40GB"), ("Tesla T4", "T4"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"), ("rtx 6000 ada", "RTX-6000-Ada"), ("NVIDIA H200", "H200"),
    ("b200", "B200"), ("NVIDIA A10G", "A10G"), ("l40s", "L40S"), ("Tesla V100-SXM2-32GB", "V100-32GB"),
])
def test_lookup_is_case_and_punctuation_insensitive(name, canonical):
    assert get_gpu(name).name == canonical


def test_unknown_gpu_is_one_line_error_listing_choices():
    with pytest.raises(MemcalError) as error:
        get_gpu("Radeon 7900")
    message = str(error.value)
    assert "\n" not in message and "H100-80GB" in message and "T4" in message


def test_every_alias_points_to_one_profile():
    keys = {}
    for gpu in GPUS:
        for name in (gpu.name, *gpu.aliases, *gpu.device_names):
            key = "".join(c for c in name.lower() if c.isalnum())
            assert keys.setdefault(key, gpu.name) == gpu.name, name


@pytest.mark.parametrize("name, cc, sms", [
    ("A100-80GB", (8, 0), 108), ("H100-80GB", (9, 0), 132), ("H100-PCIe", (9, 0), 114), ("H200", (9, 0), 132),
    ("L4", (8, 9), 58), ("L40S", (8, 9), 142), ("A10G", (8, 6), 80), ("T4", (7, 5), 40),
    ("RTX-3090", (8, 6), 82), ("RTX-4090", (8, 9), 128), ("RTX-6000-Ada", (8, 9), 142), ("B200", (10, 0), 148),
])
def test_architecture_facts(name, cc, sms):
    gpu = get_gpu(name)
    assert (gpu.compute_capability, gpu.sm_count) == (cc, sms)


def test_memory_totals_quoted_from_nvidia_smi_and_oom_messages():
    assert get_gpu("H100").nvml_total_bytes == 81559 * MiB
    assert get_gpu("T4").nvml_total_bytes == 15360 * MiB
    assert get_gpu("T4").usable_bytes == round(14.56 * GiB)
    assert get_gpu("A100-80GB").usable_bytes == round(79.25 * GiB)
    assert get_gpu("L4").usable_bytes == 23034 * MiB  # no quoted cudaMemGetInfo total: NVML's
    assert get_gpu("H100").allocator_capacity_bytes == round(79.11 * GiB) - 512 * MiB


def test_default_workspace_follows_the_architecture():
    assert default_cublas_workspace_bytes(get_gpu("H200")) == 32 * MiB
    assert default_cublas_workspace_bytes(get_gpu("B200")) == 8519680


def test_custom_gpu_from_json(tmp_path):
    path = tmp_path / "mygpu.json"
    path.write_text(json.dumps({"name": "MyGPU", "compute_capability": [8, 9], "sm_count": 60,
                                "nvml_total_bytes": "24GiB", "cuda_total_bytes": "23.5GiB"}))
    gpu = load_gpu(path)
    assert (gpu.arch, gpu.usable_bytes, gpu.context_bytes) == ("sm_89", round(23.5 * GiB), 512 * MiB)
    assert load_gpu("h200").name == "H200"


@pytest.mark.parametrize("data", [
    {"name": "x", "compute_capability": [8, 0], "sm_count": 1},  # no memory
    {"name": "x", "compute_capability": [8, 0], "sm_count": 1, "nvml_total_bytes": "1GiB", "color": "red"},
    {"name": "x", "compute_capability": [8, 0], "sm_count": 1, "nvml_total_bytes": "lots"},
    {"name": "x", "compute_capability": [8, 0], "sm_count": 0, "nvml_total_bytes": "1GiB"},
])
def test_bad_custom_gpu_is_rejected(data):
    with pytest.raises(MemcalError):
        gpu_from_dict(data)


def test_table_names_are_unique_and_listed():
    assert len(set(gpu_names())) == len(GPUS) >= 12
