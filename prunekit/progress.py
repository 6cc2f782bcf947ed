"""Progress bars that stay quiet where nobody watches (CI, tests, PRUNEKIT_PROGRESS=0)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    setting = os.environ.get("PRUNEKIT_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


def quiet_transformers_unless_progress() -> None:
    """transformers prints its own bars (weights loading); keep them only when ours show."""
    if not progress_enabled():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def progress(iterable: Iterable[T], desc: str | None = None, **kwargs) -> Iterable[T]:
    """tqdm with an ETA on stderr when enabled, else the iterable untouched."""
    if not progress_enabled() or desc is None:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kwargs)
