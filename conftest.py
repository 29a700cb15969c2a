"""Top-level pytest configuration: offline Hub, quiet libraries, device markers that skip cleanly."""
from __future__ import annotations

import os

import pytest

# No model hub at test time: an unknown model name must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _available(device: str) -> bool:
    try:
        import torch
    except ImportError:
        return False
    if device == "cuda":
        return torch.cuda.is_available()
    if device == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return torch.cuda.is_available() or (_available("mps"))


def pytest_collection_modifyitems(config, items):
    cache: dict[str, bool] = {}
    for item in items:
        for device in ("cuda", "mps", "gpu"):
            if item.get_closest_marker(device):
                if device not in cache:
                    cache[device] = _available(device)
                if not cache[device]:
                    item.add_marker(pytest.mark.skip(reason=f"needs a {device} device; none here"))
