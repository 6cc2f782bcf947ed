"""What ``prunekit eval`` is pointed at: a model spec, a run directory or an export.

Loading any of them is ``prunekit.load`` (``prunekit/loader.py``); a run directory's pruned model
is rebuilt by ``prunekit.replay.load_run`` (re-exported here). ``EvalTarget`` and
``load_for_eval`` remain for callers written before ``prunekit.load``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from prunekit.loader import load, origin_record
from prunekit.models.loading import LoadedModel
from prunekit.replay import load_run

__all__ = ["EvalTarget", "load_for_eval", "load_run"]


@dataclass
class EvalTarget:
    """A loaded model and where it came from (``kind``: model, run or export)."""

    loaded: LoadedModel
    kind: str
    path: str | None = None  # the run or export directory

    def describe(self) -> dict:
        return {**origin_record(self.loaded), "kind": self.kind, "path": self.path}


def load_for_eval(
    target: str,
    *,
    base: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    force: bool = False,
) -> EvalTarget:
    """Deprecated: ``prunekit.load(target, base=..., force=...)``; the result's ``origin`` and
    ``origin_path`` are this one's ``kind`` and ``path``."""
    warnings.warn(
        "load_for_eval is deprecated; use prunekit.load(target, ...)", DeprecationWarning, 2
    )
    loaded = load(
        target,
        base=base,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        force=force,
    )
    return EvalTarget(loaded, loaded.origin, loaded.origin_path)
