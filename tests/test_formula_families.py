"""memcal's formula against the dry-run peak on random configs of every family in the table.

The configs are drawn here (tests/family_cases.py, a fixed seed), never tuned on: for each family,
`CONFIGS` random small models, each built once per (dtype, attention) and run as a prefill and a
generate of random sizes. The target of the architecture issue: per family, median |error| of the
total peak ≤ 0.05 % and max ≤ 0.5 %, across fp32/bf16 x eager/sdpa x prefill/generate. A family
with no derived forward program yet is replayed with the generic decoder program (an approximation,
said so in its estimate): its bound is the generic program's, looser (GENERIC_*). A combination
transformers or the dry run cannot run (recorded `unsupported`, with its reason) is reported and left
out; every family must have supported points.
"""
from __future__ import annotations

import random
import statistics

import pytest

from estimator import Workload, program
from estimator.formulas import memcal
from estimator.spec import spec_from_dict, supported_families
from tests.family_cases import random_configs
from tests.harness_helpers import quiet

pytest.importorskip("torch")
from harness.measure import build_model, run_point  # noqa: E402

quiet()
pytestmark = pytest.mark.slow
CONFIGS = 3
MEDIAN_LIMIT, MAX_LIMIT = 0.0005, 0.005
GENERIC_MEDIAN_LIMIT, GENERIC_MAX_LIMIT = 0.10, 0.35
# Families that do not reach their bound yet: (median, max) as measured on these very points on
# 2026-12-01 (transformers 5.23, torch 2.13), rounded up. A regression guard, not the target: the
# architecture issue stays open for them (docs/formulas.md, "Accuracy per family").
# families held to their measured (median, worst) instead of the target: none since 2026-12-02's third
# session (gemma3_text, llama4_text, qwen3_next and qwen3_5_moe_text now within it; docs/formulas.md)
MEASURED_LIMITS: dict[str, tuple[float, float]] = {}
COMBOS = [(dtype, attention) for dtype in ("fp32", "bf16") for attention in ("eager", "sdpa")]


def workloads(rng: random.Random, dtype: str, attention: str, limit: int | None = None) -> list[Workload]:
    """A prefill and a generate of random sizes, within a learned position table's `limit`."""
    batch, prompt, new = rng.randint(1, 3), rng.randint(8, 48), rng.randint(2, 6)
    if limit is not None:
        prompt = max(2, min(prompt, limit - new))
    return [Workload(batch=batch, prompt_len=prompt, dtype=dtype, attention=attention),
            Workload(batch=batch, prompt_len=prompt, new_tokens=new, dtype=dtype, attention=attention)]


def family_errors(family: str) -> tuple[list[float], list[str]]:
    errors, skipped = [], []
    rng = random.Random(f"memcal-workloads-{family}")
    for config in random_configs(family, CONFIGS):
        config = {**config, "vocab_size": rng.choice([config["vocab_size"], 1000])}
        spec = spec_from_dict(config)
        for dtype, attention in COMBOS:
            points = workloads(rng, dtype, attention, spec.max_position_embeddings if spec.learned_positions else None)
            try:
                built = build_model(spec, points[0], "dry-run")
            except Exception as exc:  # transformers refuses this combination (e.g. no SDPA): reported
                skipped.append(f"{dtype}/{attention}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            for w in points:
                m = run_point(built, w)
                if m.status != "ok":
                    skipped.append(f"{dtype}/{attention}/{w.phase}: {m.status}: {m.message[:120]}")
                    continue
                predicted = memcal.estimate(spec, w).total_bytes
                errors.append((predicted - m.peak_tensor_bytes) / m.peak_tensor_bytes)
    return errors, skipped


@pytest.mark.parametrize("family", supported_families())
def test_formula_matches_the_dry_run_on_random_configs(family):
    errors, skipped = family_errors(family)
    assert errors, f"{family}: no supported point ({skipped})"
    worst = max(errors, key=abs)
    median = statistics.median(abs(e) for e in errors)
    generic = program.is_generic(spec_from_dict(random_configs(family, 1)[0]))
    summary = f"{family}{' (generic program)' if generic else ''}: {len(errors)} points, median |error| " \
              f"{median:.4%}, worst {worst:+.4%}; skipped {skipped}"
    print(summary)
    limits = MEASURED_LIMITS.get(family) or \
        ((GENERIC_MEDIAN_LIMIT, GENERIC_MAX_LIMIT) if generic else (MEDIAN_LIMIT, MAX_LIMIT))
    assert median <= limits[0] and abs(worst) <= limits[1], summary
