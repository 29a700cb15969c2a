"""The dry run's CUDA target (harness/measure/_cuda_target.py): the event stream it writes (SDPA replaced by
the CUDA backend's buffers, the cuBLAS workspace at the first matmul), its replay through the caching
allocator model, the record's fields, the CLI and experiment files."""
from __future__ import annotations

import json

import pytest
import torch

from estimator.cuda import get_gpu, sdpa_events
from estimator.errors import MemcalError
from estimator.spec import load_spec
from estimator.workload import Workload
from harness import Measurement
from harness.measure import measure
from harness.measure._cuda_target import SDPA_CPU, CudaTargetTracker, sdpa_call_of  # white-box
from tests.harness_helpers import quiet, tiny

quiet()
MiB = 1 << 20
_aten = torch.ops.aten


def _qkv(b=1, heads=4, kv_heads=4, s=8, d=64, dtype=torch.bfloat16):
    return (torch.zeros(b, heads, s, d, dtype=dtype), torch.zeros(b, kv_heads, s, d, dtype=dtype),
            torch.zeros(b, kv_heads, s, d, dtype=dtype))


def _sdpa(tracker, q, k, v, causal=True):
    tracker.note_args(SDPA_CPU, (q, k, v, 0.0, causal), {})
    out = SDPA_CPU(q, k, v, 0.0, causal)
    tracker.observe(SDPA_CPU, out)
    return out


def test_cudnn_output_replaces_the_cpu_outputs_and_workspace_at_first_matmul():
    tracker = CudaTargetTracker(get_gpu("H100-80GB"))
    q, k, v = _qkv()
    out = _sdpa(tracker, q, k, v)
    assert tracker.events == [("alloc", 1, 1 * 8 * 4 * 64 * 2, 0)]  # cuDNN (device 0): the output only, no logsumexp
    assert tracker.live_bytes == 4096 + 4 * 8 * 4  # the tensor level still counts the CPU out and lse
    a = torch.zeros(8, 64)
    tracker.observe(_aten.mm.default, torch.mm(a, a.t()))
    assert tracker.events[2] == ("alloc", 3, 32 * MiB, 0)  # sm_90's cuBLAS workspace, after the mm's output
    del out
    assert ("free", 1) in tracker.events  # the CUDA output is freed with the CPU output
    replay = tracker.replay()
    assert replay["allocated_bytes"] == 4096 + 512 + 32 * MiB  # blocks of 512 B; the 256 B mm output -> 512
    assert replay["backends"] == {"cudnn": 1}
    assert replay["device_bytes"] == replay["reserved_bytes"] + get_gpu("H100-80GB").context_bytes


def test_flash_on_a100_keeps_its_logsumexp_and_rng_state_inside_the_call():
    tracker = CudaTargetTracker(get_gpu("A100-80GB"))
    q, k, v = _qkv(heads=8, kv_heads=2)
    call = sdpa_call_of(q, k, v, [0.0, True], {})
    assert call.enable_gqa and call.kv_heads == 2 and call.is_causal
    out = _sdpa(tracker, q, k, v)
    expected = sdpa_events(call, "flash", 108)
    assert [e[0] for e in tracker.events] == [e[0] for e in expected]
    assert [e[2] for e in tracker.events if e[0] == "alloc"] == [e[2] for e in expected if e[0] == "alloc"]
    live = {e[1] for e in tracker.events if e[0] == "alloc"} - {e[1] for e in tracker.events if e[0] == "free"}
    assert len(live) == 1  # only the output survives the call
    del out


def test_a_float_mask_on_a100_takes_efficient_with_a_padded_mask():
    tracker = CudaTargetTracker(get_gpu("A100-80GB"))
    q, k, v = _qkv(s=7)
    mask = torch.zeros(1, 1, 7, 7, dtype=torch.bfloat16)
    tracker.note_args(SDPA_CPU, (q, k, v, 0.0, False), {"attn_mask": mask})
    tracker.observe(SDPA_CPU, SDPA_CPU(q, k, v, 0.0, False, attn_mask=mask))
    assert tracker.backends == {"efficient": 1}
    assert tracker.events[0] == ("alloc", 1, 1 * 1 * 7 * 8 * 2, 0)  # kv_len 7 padded to 8 (pad_bias<8>)


@pytest.fixture(scope="module")
def llama_records():
    spec = load_spec(tiny("llama"))
    w = Workload(batch=2, prompt_len=8, dtype="bf16")
    plain = measure(spec, w, device="dry-run")
    return plain, {g: measure(spec, w, device="dry-run", gpu=g) for g in ("A100-80GB", "H100-80GB", "T4")}


def test_dry_run_record_gains_the_cuda_totals(llama_records):
    plain, records = llama_records
    layers = tiny("llama")["num_hidden_layers"]
    for name, r in records.items():
        assert r.ok and r.cuda_gpu == name
        assert r.peak_tensor_bytes == plain.peak_tensor_bytes  # the tensor level is unchanged
        assert r.peak_allocated_bytes is None  # nothing measured: the predictions have their own fields
        assert r.peak_tensor_bytes < r.cuda_allocated_bytes <= r.cuda_reserved_bytes < r.cuda_device_bytes
        assert r.cuda_device_bytes == r.cuda_reserved_bytes + get_gpu(name).context_bytes
    assert f"flash x{layers}" in records["A100-80GB"].notes[-1]
    assert f"cudnn x{layers}" in records["H100-80GB"].notes[-1]
    assert f"math x{layers}" in records["T4"].notes[-1]
    assert records["H100-80GB"].cuda_allocated_bytes - records["A100-80GB"].cuda_allocated_bytes > 20 * MiB
    assert Measurement.from_dict(records["T4"].to_dict()) == records["T4"]


def test_old_records_load_without_the_cuda_fields():
    old = {"model": "m", "family": "llama", "device": "dry-run", "workload": {}, "status": "ok",
           "peak_tensor_bytes": 10, "schema_version": 1}
    record = Measurement.from_dict(old)
    assert record.cuda_allocated_bytes is None and record.cuda_gpu == ""


def test_gpu_needs_the_dry_run():
    with pytest.raises(MemcalError, match="dry-run"):
        measure(load_spec(tiny("llama")), Workload(batch=1, prompt_len=4), device="cpu", gpu="H100")


def test_measure_cli_prints_the_four_totals(tmp_path, capsys):
    from memcal.cli import main
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny("llama")))
    assert main(["measure", str(config), "--device", "dry-run", "--gpu", "A100-80GB", "--seq", "8"]) == 0
    text = capsys.readouterr().out
    assert "CUDA target: max_memory_reserved" in text and "device total" in text and "on A100-80GB" in text
    assert main(["measure", str(config), "--device", "dry-run", "--gpu", "A100", "--seq", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cuda_gpu"] == "A100-80GB" and out["cuda_formula"]["gpu"] == "A100-80GB"


def test_experiment_file_takes_a_gpu(tmp_path):
    from harness.sweep import load_experiment
    text = ('[experiment]\ndevice = "dry-run"\n{gpu}[[grid]]\nmodels = ["meta-llama/Llama-3.2-1B"]\n'
            'batch_sizes = [1]\nprompt_lengths = [16]\n')
    plain, with_gpu = tmp_path / "a.toml", tmp_path / "b.toml"
    plain.write_text(text.format(gpu=""))
    with_gpu.write_text(text.format(gpu='gpu = "h100"\n'))
    a, b = load_experiment(plain), load_experiment(with_gpu)
    assert a.gpu is None and b.gpu == "H100-80GB" and a.fingerprint != b.fingerprint
    assert b.with_device("cpu").gpu is None
    bad = tmp_path / "c.toml"
    bad.write_text(text.format(gpu='gpu = "h100"\n').replace("dry-run", "cpu"))
    with pytest.raises(MemcalError, match="experiment.gpu"):
        load_experiment(bad)


def test_sweep_with_a_cuda_target_records_its_totals(tmp_path):
    from memcal.commands.sweep import sweep
    from tests.sweep_helpers import lines, write_experiment
    exp = write_experiment(tmp_path, experiment={"gpu": "L4"}, models=("tiny-a",),
                           grids=[dict(models=["configs/tiny-a.json"], dtypes=["bf16"], batch_sizes=[1],
                                       prompt_lengths=[8], phases=["prefill"])])
    out = tmp_path / "r.jsonl"
    summary = sweep(str(exp), out=str(out), progress=False)
    assert summary.written == 1
    header, point = lines(out)
    assert header["gpu"] == "L4" and point["status"] == "ok" and point["cuda_gpu"] == "L4"
    assert point["peak_tensor_bytes"] < point["cuda_allocated_bytes"] <= point["cuda_reserved_bytes"]
    from harness.sweep import load_results
    frame = load_results(out)
    assert int(frame["cuda_reserved_bytes"].iloc[0]) == point["cuda_reserved_bytes"]


def _gpu_check():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_a_gpu_says_so_in_one_line(capsys, monkeypatch, tmp_path):
    gpu_check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--out", str(tmp_path)])
    assert gpu_check.main() == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA GPU" in out[0] and not any(tmp_path.iterdir())


def test_gpu_check_point_and_report_on_this_machine():
    gpu_check = _gpu_check()
    gpu = get_gpu("A100-80GB")
    row = gpu_check.check_point(tiny("llama"), 1, 8, 0, "bf16", gpu)
    assert row["cuda"]["status"] == "unsupported"  # no CUDA here: the real point is data, not an exception
    assert row["dry_run"]["cuda_gpu"] == "A100-80GB" and row["formula"]["gpu"] == "A100-80GB"
    text = gpu_check.report([row], gpu, gpu.usable_bytes)
    assert text.count("| allocated |") == 1 and "n/a" in text


@pytest.mark.slow
@pytest.mark.parametrize("batch,seq,gpu", [(2, 2048, "H100-80GB"), (4, 1024, "T4")])
def test_formula_totals_agree_with_the_dry_runs_replay(batch, seq, gpu):
    """memcal's CUDA totals (no event order) against the CUDA-target dry run (every event), Llama-3.2-1B:
    allocated within 0.5 %, reserved within 2 % (the T4 point: math SDPA, whose cached blocks both count)."""
    from estimator.cuda.target import cuda_totals
    spec = load_spec("meta-llama/Llama-3.2-1B")
    w = Workload(batch=batch, prompt_len=seq, dtype="bf16")
    r = measure(spec, w, device="dry-run", gpu=gpu)
    f = cuda_totals(spec, w, gpu, since="load")  # the dry run resets peaks after loading, as the CUDA probe does
    assert f.tensor_peak_bytes == r.peak_tensor_bytes
    assert abs(f.allocated_bytes - r.cuda_allocated_bytes) / r.cuda_allocated_bytes < 0.005
    assert abs(f.reserved_bytes - r.cuda_reserved_bytes) / r.cuda_reserved_bytes < 0.02
