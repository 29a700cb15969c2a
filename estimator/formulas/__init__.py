"""Registry of formulas: the five seeds, implemented as written, and memcal's own.

Each entry is a module with ``id``, ``source``, ``title`` and ``estimate(spec, workload, options)``.
"""
from __future__ import annotations

from types import ModuleType

from ..errors import MemcalError
from . import bit_width, gguf_cheat_sheet, gqa_flash_notebook, interactive_calculator, memcal, per_token
from .base import Options

FORMULAS: dict[str, ModuleType] = {
    m.id: m for m in (per_token, bit_width, gqa_flash_notebook, interactive_calculator, gguf_cheat_sheet, memcal)
}


def get(formula_id: str) -> ModuleType:
    try:
        return FORMULAS[formula_id.strip().lower()]
    except KeyError:
        raise MemcalError(f"unknown formula {formula_id!r}: choose from {', '.join(FORMULAS)}") from None


__all__ = ["FORMULAS", "Options", "get"]
