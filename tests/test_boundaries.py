"""The codebase's boundaries, enforced in every test run (and so in CI):

* import-linter's contracts (pyproject.toml ``[tool.importlinter]``): the estimator imports neither
  torch, transformers nor the harness; harness.analysis and harness.gate import no torch; memcal's
  commands import only public modules; the harness's layers; no import cycles;
* the same at run time: importing every torch-free package leaves torch and transformers unloaded;
* ruff (pyproject.toml ``[tool.ruff]``): pyflakes, pycodestyle, import order, line length.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter comes with the dev extra (make install)")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    result = _run(lint, "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_torch_free_packages_import_no_torch():
    code = ("import sys\n"
            "import estimator, estimator.calibration, harness, harness.sweep, harness.analysis, harness.gate\n"
            "import harness.gate.pytest_plugin, memcal.cli\n"
            "from memcal.commands import estimate, fit, merge, models, plan, regress, report, sweep\n"
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n")
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff comes with the dev extra (make install)")
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
