"""Settings for tests that share one set of values across methods of different kinds."""

from __future__ import annotations

from pathlib import Path

from prunekit.methods.catalogue import get_method
from prunekit.methods.settings import MethodSettings
from prunekit.models.tiny import _SAMPLE_TEXT


def settings_for(method: str, **values) -> MethodSettings:
    """``method``'s settings (validated) from the ``values`` its settings class has; the others
    (a width target given to a depth method, calibration given to magnitude) are left out, as
    one test's shared values are meant for several methods."""
    chosen = get_method(method)
    names = chosen.settings_type.names()
    return chosen.make_settings({k: v for k, v in values.items() if k in names})


def text_calibration(directory: Path) -> dict:
    """Calibration settings reading a small text file written into ``directory`` (the tiny
    tokenizer's sample text): 2 windows of 24 tokens."""
    path = directory / "calib.txt"
    path.write_text(_SAMPLE_TEXT * 3)
    return {"calib": str(path), "n_samples": 2, "seqlen": 24, "seed": 0}
