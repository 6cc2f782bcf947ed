"""Library versions recorded in every report, and a quiet git lookup."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def library_versions() -> dict:
    import torch

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    import prunekit

    return {
        "prunekit": prunekit.__version__,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "lm-eval": version("lm-eval") or version("lm_eval"),
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def git_commit(cwd: str | Path | None = None) -> str | None:
    """``git describe --always`` of ``cwd``, or None outside a checkout or without git.

    git's own complaints ("fatal: not a git repository") are swallowed: they are not ours to
    print, and a missing commit is not an error.
    """
    try:
        done = subprocess.run(
            ["git", "describe", "--always"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


@contextmanager
def quiet_lm_eval_git() -> Iterator[None]:
    """lm-eval records the cwd's git hash by running git with stderr on the terminal; while this
    is active it uses ``git_commit`` instead (same value, no stray "fatal: ..." line)."""
    try:
        import lm_eval.evaluator as evaluator
    except ImportError:
        yield
        return
    original = getattr(evaluator, "get_git_commit_hash", None)
    evaluator.get_git_commit_hash = git_commit
    try:
        yield
    finally:
        if original is not None:
            evaluator.get_git_commit_hash = original
