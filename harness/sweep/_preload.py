"""Imported once by the sweep's fork server, so that every worker it forks starts with torch,
transformers, every supported family's modeling module and the harness already loaded (~3 s saved
per worker). Objects made here are frozen out of gc's reach: the protocol's gc.collect stays cheap
and forked children share these pages instead of touching them. Nothing here touches a device:
CUDA must not be initialised before a fork."""
from __future__ import annotations

import gc
import importlib
import logging
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402,F401
from torch._subclasses import fake_tensor  # noqa: E402,F401

from estimator.spec import supported_families  # noqa: E402
from harness.measure import git_info  # noqa: E402  (the whole measuring side: build, phases, probes, ...)

logging.getLogger("transformers").setLevel(logging.ERROR)
for _name in ("transformers.generation.utils", "torch.profiler",
              *(f"transformers.models.{f}.modeling_{f}" for f in supported_families())):
    try:
        importlib.import_module(_name)
    except ImportError:  # an unknown family fails later, as data, when its model is built
        pass
git_info()  # cached: every worker inherits the commit instead of running git
gc.collect()
gc.freeze()
