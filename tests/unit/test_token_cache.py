"""The on-disk token cache: a second run does not tokenize; damaged or foreign entries rebuild."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.data import corpus_tokens, token_cache, tokenize_text, windows
from prunekit.models.tiny import _SAMPLE_TEXT, tiny_tokenizer


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A private cache folder, a fresh in-process cache, and a count of real tokenizations."""
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNEKIT_TOKEN_CACHE", raising=False)
    calls: list[int] = []
    real = windows.tokenize_text

    def tokenize(tokenizer, text):
        calls.append(len(text))
        return real(tokenizer, text)

    monkeypatch.setattr(windows, "tokenize_text", tokenize)
    windows._tokenized_corpus.cache_clear()
    yield calls
    windows._tokenized_corpus.cache_clear()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(_SAMPLE_TEXT * 2)
    return str(path)


def new_process_tokens(tokenizer, corpus: str) -> torch.Tensor:
    """corpus_tokens as a new process sees it: nothing in the in-process cache."""
    windows._tokenized_corpus.cache_clear()
    return corpus_tokens(tokenizer, corpus)


def entries(tmp_path) -> list:
    return sorted((tmp_path / "cache" / "tokens").glob("*.pt"))


def test_second_run_reads_the_cache(counted, corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    first = new_process_tokens(tokenizer, corpus)
    assert len(counted) == 1 and len(entries(tmp_path)) == 1
    second = new_process_tokens(tiny_tokenizer(), corpus)  # a new tokenizer object, same state
    assert len(counted) == 1
    assert second.dtype == torch.long and torch.equal(first, second)
    assert torch.equal(second, tokenize_text(tokenizer, _SAMPLE_TEXT * 2))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "tampered ids", "foreign key"])
def test_damaged_or_foreign_entry_is_rebuilt(counted, corpus, tmp_path, damage):
    tokenizer = tiny_tokenizer()
    expected = new_process_tokens(tokenizer, corpus)
    (path,) = entries(tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        entry = torch.load(path, weights_only=True)
        if damage == "tampered ids":
            entry["ids"][0] += 1  # the digest no longer matches
        else:
            entry["key"] = "0" * 64  # an entry written for another tokenizer or text
        torch.save(entry, path)
    rebuilt = new_process_tokens(tokenizer, corpus)
    assert len(counted) == 2 and torch.equal(rebuilt, expected)
    assert torch.equal(new_process_tokens(tokenizer, corpus), expected)
    assert len(counted) == 2  # the rebuilt entry is valid again


def test_changed_text_or_tokenizer_is_a_new_entry(counted, corpus, tmp_path):
    tokenizer = tiny_tokenizer()
    new_process_tokens(tokenizer, corpus)
    with open(corpus, "a") as handle:
        handle.write(" and one more sentence.")
    new_process_tokens(tokenizer, corpus)
    assert len(counted) == 2
    other = copy.deepcopy(tiny_tokenizer())  # tiny_tokenizer() is shared: never mutate it
    other.add_tokens(["<extra>"])
    assert token_cache.tokenizer_fingerprint(other) != token_cache.tokenizer_fingerprint(tokenizer)
    new_process_tokens(other, corpus)
    assert len(counted) == 3 and len(entries(tmp_path)) == 3


def test_cache_can_be_turned_off(counted, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_TOKEN_CACHE", "0")
    tokenizer = tiny_tokenizer()
    new_process_tokens(tokenizer, corpus)
    new_process_tokens(tokenizer, corpus)
    assert len(counted) == 2 and entries(tmp_path) == []
