"""Sweeps over several GPUs and machines (issue 18): lanes of workers per GPU, and the Ray backend.

Both must give the file a plain local sweep gives, point for point (dry-run points: no GPU needed;
the lanes' CUDA_VISIBLE_DEVICES changes nothing on the dry run)."""
from __future__ import annotations

import importlib.util

import pytest

from harness.sweep import load_results, read_results
from memcal.commands.sweep import sweep
from tests.sweep_helpers import write_experiment

COLUMNS = ["point_id", "repeat", "group_id", "status", "weights_bytes", "peak_tensor_bytes", "kv_cache_bytes",
           "activation_bytes"]


def _frame(path):
    return load_results(path)[COLUMNS].sort_values(["point_id", "repeat"]).reset_index(drop=True)


def _small(tmp_path):
    grids = [dict(models=["configs/tiny-a.json", "configs/tiny-b.json"], dtypes=["fp32", "bf16"], batch_sizes=[1, 2],
                  prompt_lengths=[8], phases=["prefill"])]
    return write_experiment(tmp_path, grids=grids)


def test_lanes_per_gpu_equal_a_plain_sweep(tmp_path):
    exp = _small(tmp_path)
    plain, lanes = tmp_path / "plain.jsonl", tmp_path / "lanes.jsonl"
    sweep(str(exp), out=str(plain), progress=False)
    summary = sweep(str(exp), out=str(lanes), progress=False, gpus="0,1")
    assert summary.written == 8
    assert _frame(plain).equals(_frame(lanes))
    pids = {r["group_id"]: r["worker_pid"] for r in read_results(lanes).records}
    assert len(set(pids.values())) == 4  # a worker per group, groups spread over the lanes
    assert sweep(str(exp), out=str(lanes), progress=False, gpus="0,1").written == 0  # resume as before


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'memcal[ray]')")
def test_ray_backend_equals_a_local_sweep(tmp_path):
    exp = _small(tmp_path)
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    sweep(str(exp), out=str(local), progress=False)
    summary = sweep(str(exp), out=str(remote), progress=False, ray="local")
    assert summary.written == 8 and summary.counts["ok"] == 8
    assert _frame(local).equals(_frame(remote))
    assert sweep(str(exp), out=str(remote), progress=False, ray="local").written == 0
