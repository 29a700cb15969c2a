"""Version robustness: the KV cache is read under both names transformers has used (`past_key_values`,
`cache` from 5.24), a run that leaves no cache is an error (never a zero), and pyproject states the
tested ranges."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from estimator.workload import Workload
from harness.measure import _phases as phases
from harness.measure import measure
from tests.harness_helpers import quiet, tiny

quiet()
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["past_key_values", "cache"])
def test_generate_cache_is_caught_under_either_name(name):
    catcher, cache = phases._CacheCatcher(), object()
    catcher(None, (), {name: cache, "input_ids": None})
    assert catcher.cache is cache


@pytest.mark.parametrize("name", ["past_key_values", "cache"])
def test_prefill_cache_is_read_from_either_output_field(name):
    class Output:
        pass
    out, cache = Output(), object()
    setattr(out, name, cache)
    assert phases._cache_of(out) is cache
    assert phases._cache_of(Output()) is None


@pytest.mark.parametrize("phase", ["prefill", "generate"])
def test_a_run_without_a_kv_cache_is_an_error_not_a_zero(phase, monkeypatch):
    import harness.measure._measure as measure_mod
    real = measure_mod.run_phase

    def no_cache(built, workload, input_ids, **kwargs):
        out = real(built, workload, input_ids, **kwargs)
        return phases.PhaseOutput(None, out.output_len)  # as if transformers passed it under a third name

    monkeypatch.setattr(measure_mod, "run_phase", no_cache)
    wl = Workload(batch=1, prompt_len=4, new_tokens=2 if phase == "generate" else 0, dtype="fp32")
    r = measure(tiny("llama"), wl, device="cpu")
    assert r.status == "error" and r.kv_cache_bytes is None
    assert "no KV cache" in r.message and "past_key_values or cache" in r.message


def test_a_real_generate_records_its_cache():
    wl = Workload(batch=1, prompt_len=4, new_tokens=2, dtype="fp32")
    r = measure(tiny("llama"), wl, device="cpu")
    assert r.ok and r.kv_cache_bytes > 0


def test_pyproject_states_the_tested_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    for name in ("torch", "transformers", "accelerate"):
        assert "<" in deps[name], f"{name} has no tested upper bound: {deps[name]}"
    pins = dict(line.split("==") for line in (ROOT / "constraints/cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"].startswith("2.13") and pins["transformers"].startswith("5.")


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 sse
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2
"""


def test_env_records_the_cpu_model_and_the_flags_that_change_results():
    from harness.measure._env import capture, cpu_info
    info = cpu_info(CPUINFO)
    assert info == {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
                    "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"]}
    assert cpu_info("")["cpu_flags"] is None  # unknown, never an empty list that reads as "none"
    env = capture("cpu")
    assert "cpu_model" in env and "cpu_flags" in env


def test_cpu_flags_decide_comparability_of_cpu_runs_only():
    from harness import env_differences
    a = {"device": "cpu", "cpu_flags": ["avx2", "avx512_bf16"]}
    b = {"device": "cpu", "cpu_flags": ["avx2"]}
    assert env_differences(a, b) == ["cpu_flags: ['avx2', 'avx512_bf16'] vs ['avx2']"]
    assert env_differences(a, {"device": "cpu"}) == []  # a file from before the key existed
    assert env_differences({**a, "device": "dry-run"}, {**b, "device": "dry-run"}) == []


def test_cpu_flags_matter_to_the_gate_only_for_bitsandbytes_points(tmp_path):
    """The regression gate passes the baseline's weight formats: CPU flags change bitsandbytes' CPU
    kernels only, so a dense baseline recorded on an AMX machine gates a run on one without."""
    from harness import env_differences
    a = {"device": "cpu", "cpu_flags": ["avx2", "amx_bf16"]}
    b = {"device": "cpu", "cpu_flags": ["avx2"]}
    assert env_differences(a, b, {"none"}) == []
    assert env_differences(a, b, {"none", "nf4"}) == ["cpu_flags: ['avx2', 'amx_bf16'] vs ['avx2']"]
    from harness.gate._regress import _reasons
    from harness.sweep import ResultsFile
    head = {"fingerprint": "f", "env": a}
    dense = ResultsFile(str(tmp_path / "a"), head, [{"workload": {"weights": "none"}}])
    quantized = ResultsFile(str(tmp_path / "a"), head, [{"workload": {"weights": "int8"}}])
    current = ResultsFile(str(tmp_path / "b"), {"fingerprint": "f", "env": b}, [])
    assert _reasons(dense, current) == ([], [])
    assert _reasons(quantized, current)[1] == ["cpu_flags: ['avx2', 'amx_bf16'] vs ['avx2']"]
