"""Committed results (a baseline, a dataset) come from a clean checkout: `memcal sweep` into a folder git
tracks files in refuses a dirty tree unless --allow-dirty, in one line."""
from __future__ import annotations

import subprocess

import pytest

from estimator.errors import MemcalError
from memcal.cli import main
from memcal.commands.sweep import check_committed_folder
from tests.sweep_helpers import write_experiment


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "results" / "baselines").mkdir(parents=True)
    (tmp_path / "results" / "baselines" / "old.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_a_dirty_tree_may_not_write_committed_results(repo, capsys):
    target = repo / "results" / "baselines" / "new.jsonl"
    check_committed_folder(target)  # clean: fine
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(MemcalError, match="uncommitted changes"):
        check_committed_folder(target)
    check_committed_folder(target, allow_dirty=True)
    check_committed_folder(repo / "results" / "myhost" / "r.jsonl")  # not a committed folder: fine
    exp = write_experiment(repo / "exp")
    assert main(["sweep", str(exp), "--out", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-dirty" in err and not target.exists()
