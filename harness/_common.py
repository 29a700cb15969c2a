"""What the harness's subpackages share and must mean the same everywhere: one home for each.

* `one_line(exc)`: an exception as the one line a record's ``message`` holds;
* `point_label(record)`: a point as people read it (``tiny-llama fp32 b4 s128+8 generate``);
* `median_repeat(records)`: the repeat of a point that stands for it (fit, report and the gate);
* `COMPARABLE_ENV_KEYS`, `env_differences`: when two measurements may be compared;
* `memcal_version()`: the version written into results headers and calibration profiles.

The peak of a record (`peak_bytes`) lives with the record (`harness._record`); byte formats for people
with the estimator's (`estimator.format`). Nothing here imports torch.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

__all__ = ["COMPARABLE_ENV_KEYS", "config_from_json", "config_to_json", "env_differences", "median_repeat",
           "memcal_version", "one_line", "point_label"]

# The one comparability rule (resume, merge, dataset, regression gate). Two environments are comparable
# when everything that decides what torch allocates agrees: the device kind and model, its driver and
# CUDA runtime, and the libraries. Host, date, platform string, RAM size, Python and memcal's own
# commit (with its dirtiness) may differ: a Slurm array runs on identical nodes, and comparing commits
# is what the regression gate is for. The commit stays in every header as provenance.
COMPARABLE_ENV_KEYS = ("device", "device_name", "compute_capability", "driver", "cuda_version", "torch",
                       "transformers", "bitsandbytes", "accelerate", "cpu_flags")
# The CPU features that change a CPU run (AVX512-BF16, AMX: bitsandbytes' CPU kernels), recorded since
# issue 12: compared for cpu runs only (a dry run or a GPU run does not depend on them), only when both
# environments recorded them (older files stay comparable with newer ones), and, where the caller knows
# the points at stake (the regression gate), only when some of them are bitsandbytes-quantized.
CPU_ONLY_KEYS = ("cpu_flags",)


def _compared(key: str, a: Mapping[str, Any], b: Mapping[str, Any], weights: Iterable[str] | None) -> bool:
    if key in CPU_ONLY_KEYS:
        from estimator.workload import BNB_BITS  # bitsandbytes' CPU kernels: the only CPU path the flags change
        return a.get("device") == "cpu" and key in a and key in b and \
            (weights is None or any(w in BNB_BITS for w in weights))
    return True


def env_differences(a: Mapping[str, Any], b: Mapping[str, Any], weights: Iterable[str] | None = None) -> list[str]:
    """'key: a vs b' for every comparable env key on which two environments disagree. ``weights``: the
    weight formats of the points at stake, when known: CPU flags matter only to bitsandbytes points."""
    weights = None if weights is None else set(weights)
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in COMPARABLE_ENV_KEYS
            if a.get(k) != b.get(k) and _compared(k, a, b, weights)]


def one_line(exc: BaseException) -> str:
    """'TypeName: first line of the message' (a record's message is one line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def point_label(record: Mapping[str, Any]) -> str:
    """'tiny-llama fp32 b4 s128+8 generate', with the workload fields that differ from the defaults.

    ``record`` holds ``model`` and ``workload`` (a dict of `Workload` fields), as a results record does.
    """
    w = record.get("workload") or {}
    gen = f"+{w.get('new_tokens')}" if w.get("phase") == "generate" else ""
    text = f"{record.get('model')} {w.get('dtype')}"
    if w.get("weights", "none") != "none":
        text += f"/{w['weights']}" + ("+dq" if w.get("double_quant") else "")
    text += f" b{w.get('batch')} s{w.get('prompt_len')}{gen} {w.get('phase')}"
    extras = [f"{k}={w[k]}" for k, default in (("attention", "sdpa"), ("cache", "dynamic"), ("padding", 0))
              if w.get(k, default) != default]
    if w.get("kv_dtype") not in (None, w.get("dtype")):
        extras.append(f"kv={w['kv_dtype']}")
    return text + (f" ({', '.join(extras)})" if extras else "")


def median_repeat(records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The repeat that stands for a point: the median by tensor-level peak (the lower one of an even count)."""
    ranked = sorted(records, key=lambda r: (r.get("peak_tensor_bytes") or 0, r.get("repeat", 0)))
    return ranked[(len(ranked) - 1) // 2]


def memcal_version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("memcal")
    except PackageNotFoundError:  # a source checkout on sys.path, not installed
        return "unknown"


_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def config_to_json(value: Any) -> Any:
    """A model config as strict JSON can hold it: the non-finite floats real configs carry (Nemotron-H's
    ``time_step_limit: [0.0, Infinity]``) as the strings "Infinity", "-Infinity", "NaN"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {k: config_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_to_json(v) for v in value]
    return value


def config_from_json(value: Any) -> Any:
    """`config_to_json` undone: the strings "Infinity", "-Infinity", "NaN" back to floats."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, Mapping):
        return {k: config_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [config_from_json(v) for v in value]
    return value
