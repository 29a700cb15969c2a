"""Top-level pytest configuration: offline Hub, quiet libraries.

Device markers (cuda, mps, gpu), --memcal-device and the memcal_peak fixture come from memcal's pytest
plugin (harness/gate/pytest_plugin.py, registered through the pytest11 entry point in pyproject.toml).
"""
from __future__ import annotations

import os

# No model hub at test time: an unknown model name must fail fast, not wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
