"""`memcal estimate` and `memcal models`: output, JSON shape, bad input as one line + exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memcal.cli import main

FORMULA_IDS = ["per-token", "bit-width", "gqa-flash-notebook", "interactive-calculator", "gguf-cheat-sheet",
               "memcal"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memcal", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_json_has_every_formula_with_byte_fields(capsys):
    assert main(["estimate", "meta-llama/Llama-3.1-8B", "--batch", "2", "--seq", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["parameters"] == 8_030_261_248
    assert list(out["formulas"]) == FORMULA_IDS
    for fid, row in out["formulas"].items():
        assert row["source"]
        parts = [row[k] for k in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes")]
        assert all(isinstance(x, int) for x in parts)
        assert row["total_bytes"] == sum(parts)
    # memcal's KV is exact for GQA: 2 * 32 layers * b2 * 1024 * 8 kv heads * 128 * 2 bytes
    assert out["formulas"]["memcal"]["kv_cache_bytes"] == 2 * 32 * 2 * 1024 * 8 * 128 * 2
    # + the rotary buffers inv_freq and original_inv_freq: 2 x 64 fp32
    assert out["formulas"]["memcal"]["weights_bytes"] == 8_030_261_248 * 2 + 512


def test_params_override_reaches_seed_formulas_only(capsys):
    main(["estimate", "phi-4", "--seq", "16384", "--attention", "flash", "--params", "14.7B", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["parameters_used"] == 14_700_000_000
    assert out["formulas"]["gqa-flash-notebook"]["weights_bytes"] == 29_400_000_000
    assert out["formulas"]["memcal"]["weights_bytes"] == 14_659_507_200 * 2 + 512


def test_formula_filter_and_table(capsys):
    assert main(["estimate", "gpt2", "--formula", "memcal", "--formula", "per-token", "--unit", "GB"]) == 0
    text = capsys.readouterr().out
    assert "sizes in GB (10^9 bytes)" in text
    assert "memcal" in text and "per-token" in text and "bit-width" not in text


def test_models_lists_catalogue(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ids = {r["repo_id"] for r in rows}
    assert {"openai-community/gpt2", "microsoft/phi-4", "mistralai/Mixtral-8x7B-v0.1"} <= ids


@pytest.mark.parametrize("args, fragment", [
    (["estimate", "no-such/model-xyz"], "pass a config.json"),
    (["estimate", "gpt2", "--batch", "0"], "batch must be positive"),
    (["estimate", "gpt2", "--seq", "-5"], "sequence length must be positive"),
    (["estimate", "gpt2", "--dtype", "fp12"], "unknown dtype 'fp12'"),
    (["estimate", "gpt2", "--weights", "int3"], "unknown weight quantization 'int3'"),
    (["estimate", "gpt2", "--attention", "paged"], "unknown attention implementation"),
    (["estimate", "gpt2", "--formula", "magic"], "unknown formula 'magic'"),
    (["estimate", "gpt2", "--params", "lots"], "not a count"),
    (["estimate", "gpt2", "--phase", "generate"], "at least one new token"),
    (["estimate", "gpt2", "--batch", "x"], "invalid int value"),
    (["estimate"], "name a model"),
])
def test_bad_input_is_one_line_exit_2(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memcal: error:") and fragment in lines[0], proc.stderr


def test_malformed_configs(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    no_hidden = tmp_path / "nohidden.json"
    no_hidden.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
                                     "intermediate_size": 64, "vocab_size": 100}))
    for path, fragment in [(bad_json, "not valid JSON"), (no_hidden, "has no 'hidden_size'"),
                           (tmp_path / "missing.json", "no such file")]:
        proc = run_cli("estimate", str(path))
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_length_beyond_context_is_a_warning_not_an_error(capsys):
    assert main(["estimate", "gpt2", "--seq", "4096"]) == 0
    assert "exceed" in capsys.readouterr().out


def test_config_without_kv_heads_is_mha(tmp_path, capsys):
    cfg = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 256}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["estimate", str(tmp_path), "--seq", "16", "--dtype", "fp32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["kv_heads"] == 4
    assert out["formulas"]["memcal"]["kv_cache_bytes"] == 2 * 2 * 1 * 16 * 4 * 16 * 4


def test_estimate_never_imports_torch():
    code = ("import sys, io, contextlib; from memcal.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['estimate', 'Llama-3.1-8B', '--json'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr
