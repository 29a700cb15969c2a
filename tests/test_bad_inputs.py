"""Every bad input, across every verb: one line on stderr, the documented exit code, no traceback.

The table is run in-process through `memcal.cli.main` (fast: no interpreter start per row). Each row is
(argv, expected exit code, a fragment the one line must hold). Exit 2 is bad input; exit 1 a recorded
failure (a measured point that is unsupported or oom; a regression); exit 0 a warning that still
answers. Placeholders in braces are files the fixture writes (see `files`).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memcal.cli import main
from tests.harness_helpers import tiny

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

R = "{res}"  # a valid results file (schema 1, dry run)
TABLE = [
    # --- no verb, unknown verb ---------------------------------------------------------------------
    ([], 2, "required"),
    (["nosuchverb"], 2, "invalid choice"),
    (["--nope"], 2, "required"),
    # --- estimate -----------------------------------------------------------------------------------
    (["estimate"], 2, "name a model"),
    (["estimate", "no-such-model-xyz"], 2, "unknown model"),
    (["estimate", "some-org/no-such-model"], 2, "unknown model"),
    (["estimate", "{bin}"], 2, "not a text file"),
    (["estimate", "{badjson}"], 2, "not valid JSON"),
    (["estimate", "{emptyjson}"], 2, "model_type"),
    (["estimate", "{listjson}"], 2, ""),
    (["estimate", "{emptydir}"], 2, "needs a config.json"),
    (["estimate", "{tmp}/missing.json"], 2, "no such file"),
    (["estimate", "{cfg}", "--batch", "0"], 2, "batch"),
    (["estimate", "{cfg}", "--batch", "-1"], 2, "batch"),
    (["estimate", "{cfg}", "--batch", "abc"], 2, "invalid int value"),
    (["estimate", "{cfg}", "--batch", "1.5"], 2, "invalid int value"),
    (["estimate", "{cfg}", "--seq", "0"], 2, "sequence length must be positive"),
    (["estimate", "{cfg}", "--seq", "-5"], 2, "sequence length must be positive"),
    (["estimate", "{cfg}", "--new-tokens", "-1"], 2, "new tokens must be zero or more"),
    (["estimate", "{cfg}", "--padding", "3"], 2, "needs batch 2 or more"),
    (["estimate", "{cfg}", "--padding", "-1", "--batch", "2"], 2, "padding must be at least 0"),
    (["estimate", "{cfg}", "--padding", "8", "--batch", "2", "--seq", "8"], 2, "less than the prompt"),
    (["measure", "{cfg}", "--device", "dry-run", "--padding", "2"], 2, "needs batch 2 or more"),
    (["estimate", "{cfg}", "--dtype", "fp7"], 2, "fp7"),
    (["estimate", "{cfg}", "--weights", "q9"], 2, "q9"),
    (["estimate", "{cfg}", "--kv-dtype", "nope"], 2, "nope"),
    (["estimate", "{cfg}", "--attention", "nope"], 2, "nope"),
    (["estimate", "{cfg}", "--phase", "nope"], 2, "nope"),
    (["estimate", "{cfg}", "--cache", "nope"], 2, "nope"),
    (["estimate", "{cfg}", "--params", "-7B"], 2, "-7B"),
    (["estimate", "{cfg}", "--params", "lots"], 2, "not a count"),
    (["estimate", "{cfg}", "--params", "0"], 2, "parameter count must be positive"),
    (["estimate", "{cfg}", "--formula", "nope"], 2, "nope"),
    (["estimate", "{cfg}", "--os", "beos"], 2, "beos"),
    (["estimate", "{cfg}", "--device", "tpu"], 2, "invalid choice"),
    (["estimate", "{cfg}", "--unit", "TB"], 2, "invalid choice"),
    (["estimate", "{cfg}", "--calibration", "{tmp}/missing.json"], 2, "missing.json"),
    (["estimate", "{cfg}", "--calibration", "{bin}"], 2, "not a calibration profile"),
    (["estimate", "{cfg}", "--calibration", "{cfg}"], 2, ""),
    (["estimate", "{cfg}", "--gguf-file", "{tmp}/missing.gguf"], 2, "missing.gguf"),
    (["estimate", "{cfg}", "--bnb-compute-dtype", "nope"], 2, "nope"),
    (["estimate", "{cfg}", "--no-such-flag"], 2, "unrecognized arguments"),
    (["estimate", "{cfg}", "--batch"], 2, "expected one argument"),
    (["estimate", "{cfg}", "--batch", "-0"], 2, "batch"),
    # --- models -------------------------------------------------------------------------------------
    (["models", "extra"], 2, "unrecognized arguments"),
    (["models", "--nope"], 2, "unrecognized arguments"),
    # --- measure ------------------------------------------------------------------------------------
    (["measure"], 2, "required"),
    (["measure", "no-such-model-xyz"], 2, "unknown model"),
    (["measure", "{bin}"], 2, "not a text file"),
    (["measure", "{cfg}", "--device", "tpu"], 2, "invalid choice"),
    (["measure", "{cfg}", "--memory-cap", "lots"], 2, "not a memory size"),
    (["measure", "{cfg}", "--memory-cap", "-5GiB"], 2, "-5GiB"),
    (["measure", "{cfg}", "--memory-cap", "0"], 2, "must be positive"),
    (["measure", "{cfg}", "--load-weights"], 2, "local model folder"),
    (["measure", "{cfg}", "--time-limit", "-1"], 2, "--time-limit"),
    (["measure", "{cfg}", "--time-limit", "soon"], 2, "invalid float value"),
    (["measure", "{cfg}", "--batch", "0"], 2, "batch"),
    (["measure", "{cfg}", "--seq", "-3"], 2, "sequence length must be positive"),
    (["measure", "{cfg}", "--dtype", "fp7"], 2, "fp7"),
    (["measure", "{cfg}", "--unit", "TB"], 2, "invalid choice"),
    (["measure", "{cfg}", "--load-weights", "--device", "dry-run"], 2, "local model folder"),
    (["measure", "{gpt2}", "--device", "cpu", "--seq", "5000", "--dtype", "fp32"], 1, "learned position"),
    (["measure", "{gpt2}", "--device", "dry-run", "--seq", "5000", "--dtype", "fp32"], 1, "learned position"),
    (["measure", "{huge}", "--device", "cpu", "--seq", "8"], 2, "not built"),
    (["measure", "{huge}", "--device", "cpu", "--seq", "8", "--memory-cap", "1GiB"], 1, "past the memory cap"),
    # --- sweep --------------------------------------------------------------------------------------
    (["sweep"], 2, "required"),
    (["sweep", "{tmp}/missing.toml"], 2, "missing.toml"),
    (["sweep", "{bin}"], 2, "not a text file"),
    (["sweep", "{badtoml}"], 2, ""),
    (["sweep", "{exp}", "--shard", "3/2"], 2, "shard"),
    (["sweep", "{exp}", "--shard", "x"], 2, "shard"),
    (["sweep", "{exp}", "--shard", "0/2"], 2, "shard"),
    (["sweep", "{exp}", "--timeout", "0"], 2, "--timeout must be positive"),
    (["sweep", "{exp}", "--timeout", "-5"], 2, "--timeout must be positive"),
    (["sweep", "{exp}", "--timeout", "abc"], 2, "invalid float value"),
    (["sweep", "{exp}", "--device", "tpu"], 2, "tpu"),
    (["sweep", "{exp}", "--out", "{tmp}"], 2, "is a directory"),
    (["sweep", "{exp}", "--out", "{cfg}/sub/r.jsonl"], 2, "cfg.json"),
    (["sweep", "{exp}", "--out", R], 2, "fingerprint"),
    (["sweep", "{exp}", "--out", "{bin}"], 2, "not valid JSON"),
    (["sweep", "{exp_unknown_key}"], 2, "bogus"),
    (["sweep", "{exp_missing_model}"], 2, "nowhere.json"),
    (["sweep", "{exp_gpt2_long}", "--check"], 0, "points"),
    # --- merge --------------------------------------------------------------------------------------
    (["merge"], 2, "required"),
    (["merge", R, "--out", "{tmp}/m1.jsonl"], 2, "at least two"),
    (["merge", R, "{res2}", "--out", "{tmp}/m2.jsonl"], 2, "is in both"),
    (["merge", "{tmp}/a.jsonl", "{tmp}/b.jsonl", "--out", "{tmp}/m3.jsonl"], 2, "cannot read"),
    (["merge", R, "{bin}", "--out", "{tmp}/m4.jsonl"], 2, "not valid JSON"),
    (["merge", R, "{emptyfile}", "--out", "{tmp}/m5.jsonl"], 2, "empty results file"),
    (["merge", R, "{res_other}", "--out", "{tmp}/m6.jsonl"], 2, "fingerprints differ"),
    (["merge", R, "{res_torch}", "--out", "{tmp}/m7.jsonl"], 2, "not comparable"),
    (["merge", R, "{res2}"], 2, "required: --out"),
    # --- fit ----------------------------------------------------------------------------------------
    (["fit"], 2, "required"),
    (["fit", "{tmp}/missing.jsonl", "--out", "{tmp}/c1.json"], 2, "cannot read"),
    (["fit", "{bin}", "--out", "{tmp}/c2.json"], 2, "not valid JSON"),
    (["fit", R, "--out", "{tmp}"], 2, "is a directory"),
    (["fit", R, "--out", "{tmp}", "--force"], 2, "is a directory"),
    (["fit", R, "--out", "{cfg}/sub/c.json"], 2, "cfg.json"),
    (["fit", R, "--out", "{cfg}"], 2, "exists"),
    (["fit", R, "--out", "{tmp}/c3.json", "--holdout", "2"], 2, "holdout"),
    (["fit", R, "--out", "{tmp}/c4.json", "--holdout", "-0.5"], 2, "holdout"),
    (["fit", R, "--out", "{tmp}/c5.json", "--folds", "0"], 2, "folds"),
    (["fit", R, "--out", "{tmp}/c6.json", "--formula", "nope"], 2, "nope"),
    (["fit", R, "--out", "{tmp}/c7.json", "--coefficient", "nope"], 2, "nope"),
    (["fit", R, "--out", "{tmp}/c8.json", "--method", "nope"], 2, "invalid choice"),
    (["fit", R, R, "--out", "{tmp}/c9.json"], 2, "named twice"),
    (["fit", "{emptyfile}", "--out", "{tmp}/c10.json"], 2, "empty results file"),
    (["fit", "{moved_schema1}", "--out", "{tmp}/c11.json"], 2, "cannot find the configs"),
    # --- report -------------------------------------------------------------------------------------
    (["report"], 2, "required"),
    (["report", "{tmp}/missing.jsonl", "--out", "{tmp}/r1"], 2, "cannot read"),
    (["report", R, "--out", "{cfg}", "--force"], 2, "is a file, not a folder"),
    (["report", R, "--out", "{cfg}"], 2, "is a file, not a folder"),
    (["report", R, "--out", "{cfg}/sub"], 2, "is a file"),
    (["report", R, "--out", "{reportdir}"], 2, "holds a report already"),
    (["report", R, "--out", "{tmp}/r2", "--calibration", "{tmp}/missing.json"], 2, "missing.json"),
    (["report", R, "--out", "{tmp}/r3", "--calibration", "{bin}"], 2, "not a calibration profile"),
    (["report", R, "--out", "{tmp}/r4", "--formula", "nope"], 2, "nope"),
    (["report", "{bin}", "--out", "{tmp}/r5"], 2, "not valid JSON"),
    # --- plan ---------------------------------------------------------------------------------------
    (["plan"], 2, "required"),
    (["plan", "{cfg}"], 2, "--memory"),
    (["plan", "{cfg}", "--memory", "lots", "--seq", "8"], 2, "not a memory size"),
    (["plan", "{cfg}", "--memory", "-5GiB", "--seq", "8"], 2, "-5GiB"),
    (["plan", "{cfg}", "--memory", "0", "--seq", "8"], 2, "must be positive"),
    (["plan", "{cfg}", "--memory", "1GiB"], 2, "give --seq S"),
    (["plan", "{cfg}", "--memory", "1GiB", "--batch", "1", "--seq", "8"], 2, "one of them"),
    (["plan", "{cfg}", "--memory", "1GiB", "--batch", "0"], 2, "--batch must be"),
    (["plan", "{cfg}", "--memory", "1GiB", "--batch", "-2"], 2, "--batch must be"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "0"], 2, "--seq must be"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "-4"], 2, "--seq must be"),
    (["plan", "{gpt2}", "--memory", "1GiB", "--seq", "5000"], 2, "learned position"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "100000"], 2,
     "100000 positions pass cfg's max_position_embeddings (256)"),
    (["estimate", "{cfg}", "--seq", "100000"], 0, "warning   100000 tokens exceed cfg's max_position_embeddings"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "8", "--formula", "nope"], 2, "nope"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "8", "--calibration", "{tmp}/missing.json"], 2, "missing.json"),
    (["plan", "no-such-model-xyz", "--memory", "1GiB", "--seq", "8"], 2, "unknown model"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "8", "--dtype", "fp7"], 2, "fp7"),
    (["plan", "{cfg}", "--memory", "1GiB", "--seq", "8", "--unit", "TB"], 2, "invalid choice"),
    # --- regress ------------------------------------------------------------------------------------
    (["regress"], 2, "required"),
    (["regress", "--baseline", R], 2, "one of the arguments"),
    (["regress", "--baseline", R, "--current", R, "--experiment", "{exp}"], 2, "not allowed with"),
    (["regress", "--baseline", "{tmp}/missing.jsonl", "--current", R], 2, "cannot read"),
    (["regress", "--baseline", R, "--current", "{bin}"], 2, "not valid JSON"),
    (["regress", "--baseline", R, "--current", R, "--tolerance", "abc"], 2, "--tolerance"),
    (["regress", "--baseline", R, "--current", R, "--tolerance", "5"], 2, "--tolerance"),
    (["regress", "--baseline", R, "--current", R, "--tolerance", "-2%"], 2, "--tolerance"),
    (["regress", "--baseline", R, "--current", R, "--abs", "lots"], 2, "--abs"),
    (["regress", "--baseline", R, "--current", R, "--abs", "-5MiB"], 2, "--abs"),
    (["regress", "--baseline", R, "--current", R, "--metric", "nope"], 2, "--metric"),
    (["regress", "--baseline", R, "--current", R, "--calibration", "{tmp}/missing.json"], 2, "missing.json"),
    (["regress", "--baseline", R, "--current", R, "--junit", "{tmp}"], 2, "Is a directory"),
    (["regress", "--baseline", R, "--current", R, "--junit", "{cfg}/sub/x.xml"], 2, "cfg.json"),
    (["regress", "--baseline", R, "--current", R, "--markdown", "{tmp}"], 2, "Is a directory"),
    (["regress", "--baseline", R, "--experiment", "{exp}"], 2, "not comparable"),
    (["regress", "--baseline", R, "--current", "{res_missing}", "--quiet"], 1, "2 baseline points missing"),
    (["regress", "--baseline", R, "--current", "{res_other}"], 2, "fingerprint"),
    (["regress", "--baseline", R, "--current", "{res_torch}"], 2, "torch"),
    (["regress", "--baseline", R, "--experiment", "{exp}", "--out", R], 2, "not comparable"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    f = {"tmp": str(tmp), "res": str(tmp / "res.jsonl")}
    shutil.copytree(DATA / "configs", tmp / "configs")
    lines = (DATA / "schema1-results.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["experiment_file"] = str(tmp / "report-fixture.toml")
    shutil.copy(DATA / "report-fixture.toml", tmp / "report-fixture.toml")

    def results(name, head, body):
        path = tmp / name
        path.write_text("\n".join([json.dumps(head)] + body) + "\n")
        return str(path)
    results("res.jsonl", header, lines[1:])
    f["res2"] = results("res2.jsonl", header, lines[1:])
    f["res_other"] = results("other.jsonl", {**header, "fingerprint": "0" * 16}, lines[1:])
    f["res_torch"] = results("torch.jsonl", {**header, "env": {**header["env"], "torch": "9.9.9"}}, lines[1:])
    ok = [ln for ln in lines[1:] if json.loads(ln)["status"] == "ok"]
    f["res_missing"] = results("fewer.jsonl", header, [ln for ln in lines[1:] if ln not in ok[:2]])
    moved = tmp_path_factory.mktemp("moved") / "old.jsonl"
    shutil.copy(DATA / "schema1-results.jsonl", moved)
    f["moved_schema1"] = str(moved)
    (tmp / "bin.json").write_bytes(bytes(range(256)) * 4)
    f["bin"] = str(tmp / "bin.json")
    for name, text in (("badjson", "{not json"), ("emptyjson", "{}"), ("listjson", "[1, 2]")):
        (tmp / f"{name}.json").write_text(text)
        f[name] = str(tmp / f"{name}.json")
    (tmp / "emptydir").mkdir()
    f["emptydir"] = str(tmp / "emptydir")
    (tmp / "empty.jsonl").write_text("")
    f["emptyfile"] = str(tmp / "empty.jsonl")
    (tmp / "cfg.json").write_text(json.dumps(tiny("llama")))
    f["cfg"] = str(tmp / "cfg.json")
    (tmp / "gpt2.json").write_text(json.dumps(tiny("gpt2")))
    f["gpt2"] = str(tmp / "gpt2.json")
    huge = tiny("llama", hidden_size=65536, intermediate_size=262144, num_hidden_layers=512, vocab_size=256000,
                num_attention_heads=512, num_key_value_heads=64)
    (tmp / "huge.json").write_text(json.dumps(huge))
    f["huge"] = str(tmp / "huge.json")
    exp = ('[experiment]\ndevice = "dry-run"\n\n[[grid]]\nmodels = ["cfg.json"]\ndtypes = ["fp32"]\n'
           'batch_sizes = [1]\nprompt_lengths = [8]\nphases = ["prefill"]\n')
    (tmp / "exp.toml").write_text(exp)
    f["exp"] = str(tmp / "exp.toml")
    (tmp / "unknown.toml").write_text(exp.replace("[experiment]\n", "[experiment]\nbogus = 1\n"))
    f["exp_unknown_key"] = str(tmp / "unknown.toml")
    (tmp / "nomodel.toml").write_text(exp.replace("cfg.json", "nowhere.json"))
    f["exp_missing_model"] = str(tmp / "nomodel.toml")
    (tmp / "long.toml").write_text(exp.replace("cfg.json", "gpt2.json").replace("[8]", "[5000]"))
    f["exp_gpt2_long"] = str(tmp / "long.toml")
    (tmp / "bad.toml").write_text("[experiment\nthis is = not toml")
    f["badtoml"] = str(tmp / "bad.toml")
    (tmp / "rep").mkdir()
    (tmp / "rep" / "report.md").write_text("old")
    f["reportdir"] = str(tmp / "rep")
    return f


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, code, fragment", TABLE, ids=[" ".join(a)[:60] or "(none)" for a, _, _ in TABLE])
def test_bad_input_is_one_line(argv, code, fragment, files, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(files["tmp"])  # away from the checkout: nothing is found by a relative path from there
    argv = [a.format(**files) for a in argv]
    got, out, err = _run(argv, capsys)
    assert "Traceback" not in err + out
    assert got == code, (got, out[-500:], err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("memcal"), err
        assert fragment.format(**files) in lines[0], lines[0]
    else:
        assert fragment in out + err, out + err


def test_the_table_is_big_enough_and_covers_every_verb():
    from memcal.cli import VERBS
    assert len(TABLE) >= 100
    assert {a[0] for a, _, _ in TABLE if a} >= set(VERBS)


def test_a_closed_pipe_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written (`memcal models | head -0`)
    proc = subprocess.run([sys.executable, "-m", "memcal", "models"], stdout=write, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    os.close(write)
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == ""
    assert proc.returncode == 141


def test_an_unknown_name_is_refused_fast_offline(monkeypatch, capsys):
    import time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert _run(["estimate", "some-org/not-a-model"], capsys)[0] == 2
    assert time.monotonic() - start < 2


def test_interactive_mode_asks_again_after_a_bad_answer(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # model: first an unknown name, then phi-4; parameters: "lots" then 14.7; bits: default; seqlen: "-"
    # then 16384; batch 1; FlashAttention: "maybe" then Y; KV cache Y
    answers = "no-such-model-xyz\nmicrosoft/phi-4\nlots\n14.7\n\nnot-a-number\n16384\n1\nmaybe\nY\nY\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(answers))
    code, out, err = _run(["estimate", "--interactive"], capsys)
    assert code == 0, err
    assert out.count("not accepted") == 4
    assert "Total Memory consumption (given the selected configuration): 36.13 GB" in out
