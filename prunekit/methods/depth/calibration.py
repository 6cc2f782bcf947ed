"""The calibration windows every depth method runs on (the runner over them is runner.py)."""

from __future__ import annotations

import torch

from prunekit.data import calibration_windows, check_seqlen, corpus_tokens, held_out_windows
from prunekit.methods.depth.scores import Candidate  # noqa: F401  (re-exported)
from prunekit.methods.settings import CalibrationSettings
from prunekit.models.loading import LoadedModel


def settings_windows(loaded: LoadedModel, settings: CalibrationSettings) -> torch.Tensor:
    """The seeded calibration windows the settings describe ([n_samples, seqlen] token ids)."""
    tokens, bos = _calibration_text(loaded, settings)
    return calibration_windows(tokens, settings.n_samples, settings.seqlen, settings.seed, bos)


def held_out_settings_windows(loaded: LoadedModel, settings: CalibrationSettings) -> torch.Tensor:
    """As many windows of the same calibration text as ``settings_windows``, none overlapping
    them: a plan restored on the calibration windows is scored on these."""
    tokens, bos = _calibration_text(loaded, settings)
    return held_out_windows(tokens, settings.n_samples, settings.seqlen, settings.seed, bos)


def _calibration_text(
    loaded: LoadedModel, settings: CalibrationSettings
) -> tuple[torch.Tensor, int | None]:
    """The calibration corpus as one token stream, and the BOS each window starts with (if any)."""
    check_seqlen(settings.seqlen, loaded.model.config)
    tokens = corpus_tokens(loaded.tokenizer, settings.calib)
    bos = loaded.tokenizer.bos_token_id if loaded.adapter.bos_per_window else None
    return tokens, bos
