"""Results files: append-only JSON Lines with a versioned header, torn-line tolerance, merge checks."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from estimator.errors import MemcalError
from harness.sweep import RESULTS_SCHEMA_VERSION, ResultsWriter, load_results, merge_results, read_results, repair_tail

RESULTS = Path(__file__).resolve().parent.parent / "results"
ENV = {"device": "dry-run", "device_name": "x86_64", "device_total_bytes": 8 << 30, "torch": "2.13.0+cpu",
       "transformers": "5.23.0", "bitsandbytes": "0.50.2", "accelerate": "1.15.0", "python": "3.11.7",
       "commit": "abc", "host": "node-1", "date": "2026-01-01T00:00:00+00:00", "cuda_version": None}


def header(**changes) -> dict:
    return {"schema_version": RESULTS_SCHEMA_VERSION, "experiment": "exp", "fingerprint": "f" * 16, "shard": None,
            "env": dict(ENV), **changes}


def record(i: int, status: str = "ok", **changes) -> dict:
    return {"point_id": f"{i:016x}", "repeat": 0, "group_id": "g" * 12, "stage": "run", "worker_pid": 1,
            "model": "m", "family": "llama", "device": "dry-run", "status": status, "message": "",
            "workload": {"batch": i + 1, "prompt_len": 8, "new_tokens": 0, "dtype": "fp32", "weights": "none",
                         "kv_dtype": "fp32", "attention": "sdpa", "phase": "prefill", "cache": "dynamic",
                         "double_quant": False},
            "weights_bytes": 100, "peak_tensor_bytes": 1000 + i if status == "ok" else None,
            "env": {**ENV, "date": f"2026-01-01T00:00:0{i}+00:00"}, "notes": [], "schema_version": 1, **changes}


def write(path: Path, head: dict, records: list[dict]) -> Path:
    with ResultsWriter.create(path, head) as w:
        for r in records:
            w.write(r)
    return path


def test_round_trip_keeps_only_env_differences_on_disk(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [record(0), record(1, "oom")])
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert raw[0]["type"] == "header" and raw[1]["type"] == "point"
    assert raw[1]["env"] == {} and raw[2]["env"] == {"date": "2026-01-01T00:00:01+00:00"}
    back = read_results(path)
    assert back.records[1]["env"]["torch"] == "2.13.0+cpu" and back.records[1]["status"] == "oom"
    assert back.keys() == {(f"{0:016x}", 0), (f"{1:016x}", 0)}


def test_create_refuses_to_overwrite(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [])
    with pytest.raises(MemcalError, match="never overwrites"):  # one line, not a FileExistsError (issue 12)
        ResultsWriter.create(path, header())


def test_torn_last_line_is_skipped_with_a_warning_and_repaired(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [record(0), record(1)])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"type":"point","point_id":"00')
    with pytest.warns(UserWarning, match="torn last line"):
        frame = load_results(path)
    assert len(frame) == 2
    assert repair_tail(path) == len(b'{"type":"point","point_id":"00')
    assert path.read_bytes() == whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_results(path)
    assert repair_tail(path) == 0


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [record(0)])
    path.write_text(path.read_text() + "not json\n" + json.dumps({"type": "point", **record(1)}) + "\n")
    with pytest.raises(MemcalError, match="line 3 is not valid JSON"):
        read_results(path)


def test_newer_schema_is_refused(tmp_path):
    path = write(tmp_path / "r.jsonl", header(schema_version=RESULTS_SCHEMA_VERSION + 1), [])
    with pytest.raises(MemcalError, match="newer than this memcal"):
        load_results(path)


def test_dataframe_has_workload_columns_and_nullable_byte_ints(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [record(0), record(1, "oom"), record(2, "skipped")])
    frame = load_results(path)
    assert list(frame["status"]) == ["ok", "oom", "skipped"]
    assert list(frame["batch"]) == [1, 2, 3]
    assert str(frame["peak_tensor_bytes"].dtype) == "Int64"
    assert frame["peak_tensor_bytes"][0] == 1000 and frame["peak_tensor_bytes"].isna().tolist() == [False, True, True]
    assert frame["peak_bytes"][0] == 1000
    assert frame.attrs["header"]["fingerprint"] == "f" * 16


def test_merge_combines_shards_into_a_new_file(tmp_path):
    a = write(tmp_path / "a.jsonl", header(shard="1/2"), [record(0), record(1)])
    node2 = {**ENV, "host": "node-2"}
    b = write(tmp_path / "b.jsonl", header(shard="2/2", env=node2), [record(2, env=node2)])
    merged = merge_results([a, b], tmp_path / "m.jsonl")
    assert [r["point_id"] for r in merged.records] == [f"{i:016x}" for i in range(3)]
    assert merged.header["shard"] is None and [m["shard"] for m in merged.header["merged_from"]] == ["1/2", "2/2"]
    assert merged.records[2]["env"]["host"] == "node-2"  # each point keeps its own environment
    with pytest.raises(MemcalError, match="never overwrites"):
        merge_results([a, b], tmp_path / "m.jsonl")


@pytest.mark.parametrize("change, message", [
    (dict(fingerprint="e" * 16), "experiment fingerprints differ"),
    (dict(env={**ENV, "torch": "2.12.0"}), r"environments are not comparable \(torch: '2.13.0\+cpu' vs '2.12.0'\)"),
    (dict(env={**ENV, "device_name": "NVIDIA H100"}), "device_name"),
])
def test_merge_refuses_incomparable_files(tmp_path, change, message):
    a = write(tmp_path / "a.jsonl", header(), [record(0)])
    b = write(tmp_path / "b.jsonl", header(**change), [record(1)])
    with pytest.raises(MemcalError, match=message):
        merge_results([a, b], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_refuses_a_point_twice(tmp_path):
    a = write(tmp_path / "a.jsonl", header(), [record(0)])
    b = write(tmp_path / "b.jsonl", header(), [record(0)])
    with pytest.raises(MemcalError, match="is in both"):
        merge_results([a, b], tmp_path / "m.jsonl")


@pytest.mark.parametrize("name, minimum", [("cpu-grid", 300), ("dryrun-catalogue", 1900),
                                           ("dryrun-architectures", 800)])
def test_committed_datasets_load(name, minimum):
    path = RESULTS / "cpu-2core-ref" / f"{name}.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `memcal sweep experiments/{name}.toml --machine cpu-2core-ref`")
    frame = load_results(path)
    assert len(frame) >= minimum
    assert frame["point_id"].is_unique
    assert (frame["status"] == "ok").sum() > minimum // 2
    assert frame.attrs["header"]["env"]["torch"]
    assert frame.attrs["header"]["env"]["dirty"] is False  # committed datasets come from a clean tree
