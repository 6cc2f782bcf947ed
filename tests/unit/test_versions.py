"""The versions recorder never lets git's own messages reach the terminal."""

from __future__ import annotations

import shutil

import pytest

from prunekit.report.versions import git_commit, quiet_lm_eval_git

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_git_commit_outside_a_checkout_is_silent(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert git_commit() is None
    assert capfd.readouterr().err == ""


@needs_git
def test_lm_eval_git_hash_is_quiet_while_evaluating(tmp_path, monkeypatch, capfd):
    evaluator = pytest.importorskip("lm_eval.evaluator")
    monkeypatch.chdir(tmp_path)
    evaluator.get_git_commit_hash()
    assert "not a git repository" in capfd.readouterr().err  # what users saw before
    with quiet_lm_eval_git():
        assert evaluator.get_git_commit_hash() is None
    assert capfd.readouterr().err == ""
    assert evaluator.get_git_commit_hash is not git_commit  # restored afterwards


def test_git_commit_without_git_is_none(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert git_commit(tmp_path) is None
    assert capfd.readouterr().err == ""
