"""Corpora resolution and token windows (docs/protocol.md)."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.data import (
    calibration_windows,
    check_seqlen,
    eval_windows,
    held_out_windows,
    load_corpus,
)
from prunekit.data.corpora import corpus_source
from prunekit.errors import DataError, SettingsError


def test_eval_windows_drop_the_tail():
    tokens = torch.arange(1050)
    windows = eval_windows(tokens, 100)
    assert windows.shape == (10, 100)
    assert torch.equal(windows.flatten(), tokens[:1000])


def test_eval_windows_max_windows_and_bos():
    tokens = torch.arange(1000)
    assert eval_windows(tokens, 100, max_windows=3).shape == (3, 100)
    with_bos = eval_windows(tokens, 100, bos_token_id=7)
    assert with_bos.shape == (10, 100)
    assert (with_bos[:, 0] == 7).all()
    assert torch.equal(with_bos[0, 1:], tokens[:99])


def test_too_short_text_is_an_error():
    with pytest.raises(DataError, match="fewer than one window"):
        eval_windows(torch.arange(10), 100)
    with pytest.raises(DataError):
        calibration_windows(torch.arange(10), 4, 100, seed=0)


def test_calibration_windows_are_seeded():
    tokens = torch.arange(10_000)
    a = calibration_windows(tokens, 8, 64, seed=3)
    b = calibration_windows(tokens, 8, 64, seed=3)
    c = calibration_windows(tokens, 8, 64, seed=4)
    assert a.shape == (8, 64)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every window is a contiguous slice of the stream
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()


def test_seqlen_checked_against_context():
    class Config:
        max_position_embeddings = 512

    check_seqlen(512, Config())
    with pytest.raises(SettingsError, match="exceeds the model's context"):
        check_seqlen(513, Config())


def test_local_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world")
    assert load_corpus(str(txt)) == "hello world"
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ["one", "two"]))
    assert load_corpus(str(jsonl)) == "one two"
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"body": 1}\n')
    with pytest.raises(DataError, match="'text' field"):
        load_corpus(str(bad))
    empty = tmp_path / "d.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="no text"):
        load_corpus(str(empty))
    with pytest.raises(DataError, match="not found"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'wikitext3'.*c4, ptb, wikitext2"):
        load_corpus("wikitext3")


def test_offline_corpora_follow_the_protocol(data_dir):
    wiki = load_corpus("wikitext2")
    assert len(wiki) == 1_294_336  # the joined test split (shared/data/README.md)
    ptb = load_corpus("ptb")
    assert "\n" not in ptb  # sentences joined with " "
    c4 = load_corpus("c4")
    assert len(c4) > 1_000_000
    assert "PRUNEKIT_DATA_DIR" in corpus_source("c4") and "sample" in corpus_source("c4")


def _token_sets(windows: torch.Tensor) -> set[int]:
    return {int(t) for t in windows.flatten()}


def test_held_out_windows_share_no_token_with_the_calibration_windows():
    tokens = torch.arange(400)  # a window's values are its positions in the stream
    calib = calibration_windows(tokens, 4, 32, seed=0)
    held = held_out_windows(tokens, 4, 32, seed=0)
    assert held.shape == calib.shape
    assert not _token_sets(held) & _token_sets(calib)
    assert torch.equal(held, held_out_windows(tokens, 4, 32, seed=0))  # seeded
    # Negative control: a plain draw with another seed overlaps on a corpus this small.
    assert _token_sets(calibration_windows(tokens, 4, 32, seed=1)) & _token_sets(calib)


def test_held_out_windows_keep_the_bos_and_refuse_a_corpus_too_small():
    tokens = torch.arange(5, 400)
    held = held_out_windows(tokens, 2, 16, seed=3, bos_token_id=1)
    assert held.shape == (2, 16) and (held[:, 0] == 1).all()
    with pytest.raises(DataError, match="too few for 4 held-out windows"):
        held_out_windows(torch.arange(100), 4, 32, seed=0)
