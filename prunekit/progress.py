"""Progress bars that stay quiet where nobody watches (CI, tests, PRUNEKIT_PROGRESS=0)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Protocol, TypeVar

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


def progress(
    iterable: Iterable[T], desc: str | None = None, leave: bool = False, **kwargs
) -> Iterable[T]:
    """tqdm with an ETA on stderr when enabled, else the iterable untouched. ``leave`` keeps the
    finished bar on screen (outer loops); inner ones vanish when done."""
    if not progress_enabled() or desc is None:
        return iterable
    return tqdm(iterable, desc=desc, leave=leave, dynamic_ncols=True, **kwargs)


class Bar(Protocol):
    """The part of tqdm's interface that manually driven bars use."""

    def update(self, n: float = 1) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...


class SilentBar:
    """A bar that shows nothing: what :func:`progress_bar` gives when progress is off."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(desc: str | None, total: int, leave: bool = False, **kwargs) -> Bar:
    """A bar the caller advances itself (``update``, ``set_postfix_str``, ``close``), for work
    that is not one loop; silent when progress is off or ``desc`` is None."""
    if not progress_enabled() or desc is None:
        return SilentBar()
    return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, **kwargs)
