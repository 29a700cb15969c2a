"""Provenance of a measurement: device, driver, library versions, host, commit, date.

Every value is plain JSON (str, int, bool, None). Anything that cannot be read here is None, with
no exception: a CPU-only machine has no CUDA version, a tarball has no git commit.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]  # the checkout: harness/measure/_env.py -> ../../..


def library_version(module: str) -> str | None:
    """The installed version of a distribution, or None."""
    return _version(module)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed
        return None


@lru_cache(maxsize=1)
def git_info() -> dict[str, Any]:
    """Commit of the memcal checkout and whether it has uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# CPU features that change what a CPU run allocates or which kernel it takes: bitsandbytes' 4-bit CPU
# kernel repacks weights only with AVX512-BF16 (memcal's formula follows it), oneDNN takes AMX paths.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name and which of `CPU_FLAGS` it has (Linux: /proc/cpuinfo; else what platform says)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            have = set(value.split())
            flags = [f for f in CPU_FLAGS if f in have]
    return {"cpu_model": model or platform.processor() or None, "cpu_flags": flags}


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_info(device: str) -> dict[str, Any]:
    """Name and total memory of the device a measurement ran on (the host for cpu and dry-run)."""
    import torch
    info: dict[str, Any] = {"device_name": platform.processor() or platform.machine(),
                            "device_total_bytes": _total_ram()}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(device_name=props.name, device_total_bytes=int(props.total_memory),
                    compute_capability=f"{props.major}.{props.minor}")
        info["driver"] = _nvml_driver()
    elif device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        info.update(device_name="Apple MPS", device_total_bytes=_total_ram())
        try:
            info["device_recommended_max_bytes"] = int(torch.mps.recommended_max_memory())
        except (AttributeError, RuntimeError):
            pass
    return info


def _nvml_driver() -> str | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            return driver.decode() if isinstance(driver, bytes) else str(driver)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no GPU: not an error here
        return None


def capture(device: str) -> dict[str, Any]:
    """The environment record of one measurement."""
    import torch
    env: dict[str, Any] = {
        "device": device,
        **device_info(device),
        "cuda_version": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "accelerate": _version("accelerate"),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    env.update(git_info())
    return env
