"""GPU profiles: one table of frozen records, looked up by name (case-insensitive, with aliases).

Columns and their sources:
* compute capability and SM count: NVIDIA's architecture whitepapers / product briefs (A100: GA100
  whitepaper, 108 SMs; H100 SXM5 132, H100 PCIe 114: GH100 whitepaper; H200 132; L4 58, L40S 142,
  RTX 6000 Ada 142, RTX 4090 128: Ada whitepaper; A10 72, A10G 80, RTX 3090 82, RTX A6000 84: GA102;
  T4 40: Turing whitepaper; V100 80: GV100 whitepaper; B200 148: Blackwell datasheet).
* nvml_total_bytes: what NVML / nvidia-smi report as total. Quoted from nvidia-smi output in a
  public pull request (modal-labs/modal-client#2797: H100 81559 MiB, A100 80GB 81920 MiB, A100 40GB
  40960 MiB, A10(G) 23028 MiB, L40S 46068 MiB, L4 23034 MiB, T4 15360 MiB); the others are the board's
  nominal size in MiB (marked `nominal` in `sources`).
* cuda_total_bytes: the total that cudaMemGetInfo returns, which is what torch's OOM message prints as
  "total capacity" and what the caching allocator can ever reach (plus the CUDA context's share).
  Taken from published OOM messages (2 decimals of GiB, so +-5 MiB), cited per row; it moves by
  0.1-0.3 GiB between driver versions (T4: 14.76 GiB in 2021 messages, 14.56 GiB in 2025 ones).
  None where no message was found: `usable_bytes` then falls back to nvml_total_bytes.
* context_bytes: the CUDA context + kernels of a torch process, outside the caching allocator. An
  estimate: 723 MiB was reported for a first CUDA tensor before lazy module loading
  (discuss.pytorch.org "What is the reason for pytorch's GPU memory floor?"); lazy loading is on by
  default on Linux since CUDA 12.2 (NVIDIA developer forum, "How to enable the CUDA's lazy module
  loading") and shrinks it. We assume 512 MiB +- 256 MiB for every GPU until `make gpu-check` measures it.
* the default cuBLAS workspace comes from workspaces.py (sm_90 gets 32 MiB), not from this table.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

from estimator.errors import MemcalError
from estimator.units import GiB, MiB, parse_size

CONTEXT_ESTIMATE_BYTES = 512 * MiB
CONTEXT_UNCERTAINTY_BYTES = 256 * MiB


@dataclass(frozen=True)
class GpuProfile:
    """One GPU model: the facts memcal's CUDA estimates need. Sizes are ints of bytes."""

    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    nvml_total_bytes: int
    cuda_total_bytes: int | None = None
    context_bytes: int = CONTEXT_ESTIMATE_BYTES
    aliases: tuple[str, ...] = ()
    device_names: tuple[str, ...] = ()  # as torch.cuda.get_device_name() prints them
    sources: str = ""

    def __post_init__(self) -> None:
        if self.sm_count <= 0 or self.nvml_total_bytes <= 0 or self.context_bytes < 0:
            raise MemcalError(f"GPU {self.name!r}: sm_count and memory must be positive")
        if self.cuda_total_bytes is not None and self.cuda_total_bytes > self.nvml_total_bytes:
            raise MemcalError(f"GPU {self.name!r}: cuda_total_bytes exceeds nvml_total_bytes")

    @property
    def arch(self) -> str:
        """'sm_90' for compute capability (9, 0)."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def usable_bytes(self) -> int:
        """The device total as cudaMemGetInfo reports it (NVML's total where no quote exists)."""
        return self.cuda_total_bytes if self.cuda_total_bytes is not None else self.nvml_total_bytes

    @property
    def allocator_capacity_bytes(self) -> int:
        """What the caching allocator can reserve in an otherwise idle GPU: total minus the context."""
        return self.usable_bytes - self.context_bytes


def _gib(text: str) -> int:
    """An OOM message's 'total capacity of 79.11 GiB' as bytes (2 decimals: +-5 MiB)."""
    return round(float(text) * GiB)


def _row(name, cc, sms, nvml_mib, cuda_gib=None, aliases=(), device_names=(), sources=""):
    return GpuProfile(name, cc, sms, nvml_mib * MiB, _gib(cuda_gib) if cuda_gib else None,
                      aliases=tuple(aliases), device_names=tuple(device_names), sources=sources)


_SMI = "nvidia-smi total from modal-labs/modal-client#2797"
GPUS: tuple[GpuProfile, ...] = (
    _row("A100-40GB", (8, 0), 108, 40960, "39.50", ["a100-40", "a100-sxm4-40gb", "a100-pcie-40gb"],
         ["NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"], f"{_SMI}; OOM total from TianheWu/CoSeR#10 (2025)"),
    _row("A100-80GB", (8, 0), 108, 81920, "79.25", ["a100", "a100-80", "a100-sxm4-80gb", "a100-80gb-pcie"],
         ["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"], f"{_SMI}; OOM total from wbfwonderful/Vad-R1#11 (2026)"),
    _row("H100-80GB", (9, 0), 132, 81559, "79.11", ["h100", "h100-sxm", "h100-80", "h100-sxm5-80gb"],
         ["NVIDIA H100 80GB HBM3"], f"{_SMI}; OOM total from vllm-project/vllm#27508 (2025)"),
    _row("H100-PCIe", (9, 0), 114, 81559, None, ["h100-pcie", "h100-pcie-80gb"], ["NVIDIA H100 PCIe"],
         "SM count from the GH100 whitepaper; memory assumed equal to the SXM board's (not quoted)"),
    _row("H200", (9, 0), 132, 143771, None, ["h200-141gb", "h200-sxm"], ["NVIDIA H200"],
         "nominal 141 GB board as nvidia-smi lists it (143771 MiB, not quoted from a source)"),
    _row("B200", (10, 0), 148, 183359, None, ["b200-180gb"], ["NVIDIA B200"],
         "nominal 180 GB per GPU in DGX B200 (183359 MiB, not quoted from a source)"),
    _row("L4", (8, 9), 58, 23034, None, ["l4-24gb"], ["NVIDIA L4"], _SMI),
    _row("L40S", (8, 9), 142, 46068, "44.53", ["l40s-48gb"], ["NVIDIA L40S"],
         f"{_SMI}; OOM total from Wan-Video/Wan2.1#205 (2025)"),
    _row("A10G", (8, 6), 80, 23028, None, ["a10g-24gb"], ["NVIDIA A10G"], f"{_SMI} (listed there as A10)"),
    _row("A10", (8, 6), 72, 23028, None, ["a10-24gb"], ["NVIDIA A10"], "memory assumed equal to A10G's"),
    _row("T4", (7, 5), 40, 15360, "14.56", ["tesla-t4", "t4-16gb"], ["Tesla T4"],
         f"{_SMI}; OOM total from Zheng-Chong/CatVTON#133 (2025)"),
    _row("RTX-3090", (8, 6), 82, 24576, None, ["3090", "rtx3090", "geforce-rtx-3090"],
         ["NVIDIA GeForce RTX 3090"], "nominal 24 GiB"),
    _row("RTX-4090", (8, 9), 128, 24564, "23.64", ["4090", "rtx4090", "geforce-rtx-4090"],
         ["NVIDIA GeForce RTX 4090"], "nominal; OOM total from TMElyralab/MuseTalk#76 (2024; 23.52-23.68 seen)"),
    _row("RTX-6000-Ada", (8, 9), 142, 49140, None, ["rtx6000ada", "rtx-6000-ada-generation"],
         ["NVIDIA RTX 6000 Ada Generation"], "nominal 48 GB"),
    _row("RTX-A6000", (8, 6), 84, 49140, None, ["a6000", "rtxa6000"], ["NVIDIA RTX A6000"], "nominal 48 GB"),
    _row("V100-16GB", (7, 0), 80, 16384, None, ["v100-16", "v100-sxm2-16gb"], ["Tesla V100-SXM2-16GB"],
         "nominal; sm_70 is not in torch 2.13's default CUDA 13 wheel"),
    _row("V100-32GB", (7, 0), 80, 32768, "31.74", ["v100", "v100-32", "v100-sxm2-32gb"],
         ["Tesla V100-SXM2-32GB"], "nominal; OOM total from haotian-liu/LLaVA#812 (2023)"),
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _index() -> dict[str, GpuProfile]:
    index: dict[str, GpuProfile] = {}
    for gpu in GPUS:
        for name in (gpu.name, *gpu.aliases, *gpu.device_names):
            index[_key(name)] = gpu
    return index


_INDEX = _index()


def gpu_names() -> list[str]:
    return [gpu.name for gpu in GPUS]


def get_gpu(name: str) -> GpuProfile:
    """A profile by name, alias or torch device name, case- and punctuation-insensitive."""
    gpu = _INDEX.get(_key(name))
    if gpu is None:
        raise MemcalError(f"unknown GPU {name!r}; choose one of {', '.join(gpu_names())} or pass a JSON file")
    return gpu


def gpu_from_dict(data: dict) -> GpuProfile:
    """A custom profile: the GpuProfile fields; sizes may be written '24GiB'; context defaults to the estimate."""
    known = {f.name for f in fields(GpuProfile)}
    unknown = set(data) - known
    if unknown or not {"name", "compute_capability", "sm_count", "nvml_total_bytes"} <= set(data):
        raise MemcalError(f"GPU profile needs name, compute_capability, sm_count, nvml_total_bytes; "
                          f"unknown keys: {sorted(unknown)}")
    values = dict(data)
    for size in ("nvml_total_bytes", "cuda_total_bytes", "context_bytes"):
        if values.get(size) is not None:
            values[size] = _size(values[size], size)
    values["compute_capability"] = tuple(int(v) for v in values["compute_capability"])
    for many in ("aliases", "device_names"):
        values[many] = tuple(values.get(many, ()))
    return GpuProfile(**values)


def load_gpu(spec: str | Path) -> GpuProfile:
    """`--gpu NAME` or `--gpu FILE.json`: a table entry, or a custom profile from a JSON file."""
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        try:
            return gpu_from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise MemcalError(f"cannot read GPU profile {spec}: {error}") from None
    return get_gpu(str(spec))


def _size(value, what: str) -> int:
    try:
        return parse_size(value)
    except ValueError as error:
        raise MemcalError(f"GPU profile {what}: {error}") from None
