"""Fixtures shared by the unit test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def measured_peaks(tmp_path_factory, data_dir) -> dict:
    """Peak RssAnon growth of streamed and in-memory FASP on the big random Llama, measured once
    (subprocesses) for both the memory-bound test and the memory model's comparison."""
    from tests.unit.test_streamed_width import measure_fasp_peaks

    return measure_fasp_peaks(tmp_path_factory.mktemp("memory"))
