"""memcal's formula against the dry run at real sizes: one real checkpoint per family.

tests/test_formula_families.py holds each family's forward program to the dry run on small random
configs; a program derived from small configs can fit coincidences that only show at real sizes (a
size that grows with the prompt where the truth does not). This test reads the committed dataset of
experiments/dryrun-architectures.toml (one real config per family, bf16, batch 1 and 8, prompts 1,024
to 32,768, prefill and generate; measured once, by `memcal sweep`) and recomputes memcal's prediction
for every ok point: arithmetic only, so it runs without torch.

The target is the architecture issue's, 0.5 % on every point. Families that do not reach it yet are
listed with their measured worst error (rounded up): a regression guard, and the list of what is left.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from estimator import Workload
from estimator.formulas import memcal
from estimator.spec import supported_families

DATASET = Path(__file__).resolve().parents[1] / "results" / "cpu-2core-ref" / "dryrun-architectures.jsonl"
TARGET = 0.005
# families that miss TARGET, held to their worst |error| measured (rounded up; docs/formulas.md): none
# since 2026-12-02's third session (qwen3_5_moe_text, qwen3_next and gemma3_text now within it)
MEASURED_WORST: dict[str, float] = {}


@pytest.fixture(scope="module")
def errors_by_family() -> dict[str, list[tuple[float, str]]]:
    from harness.analysis._compare import load_dataset
    data = load_dataset([DATASET])
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for point in data.points:
        spec = data.specs[point["model"]]
        w = Workload(**point["workload"])
        predicted = memcal.estimate(spec, w).total_bytes
        measured = point["peak_tensor_bytes"]
        out[spec.family].append(((predicted - measured) / measured, f"{point['model']} {w.describe()}"))
    return out


def test_every_family_has_real_size_points(errors_by_family):
    missing = sorted(set(supported_families()) - set(errors_by_family))
    assert not missing, f"families without an ok point in {DATASET.name}: {missing}"


@pytest.mark.parametrize("family", supported_families())
def test_formula_within_bound_at_real_size(errors_by_family, family):
    errors = errors_by_family[family]
    assert errors, f"{family}: no ok point"
    worst, where = max(errors, key=lambda e: abs(e[0]))
    bound = MEASURED_WORST.get(family, TARGET)
    assert abs(worst) <= bound, f"{family}: worst {worst:+.3%} at {where} (bound {bound:.1%})"
