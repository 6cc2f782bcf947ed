"""Tokenized corpora cached on disk across runs, keyed by the tokenizer and the text itself.

Tokenizing the C4 calibration sample takes ~0.4 of a SmolLM2 forward over 16×512 windows, and
every ``prune`` / ``eval`` run used to pay it again. An entry lives under
``$PRUNEKIT_CACHE_DIR/tokens`` (default ``~/.cache/prunekit/tokens``), named by a SHA-256 of
the tokenizer's full serialized state (vocabulary, merges, normalizer, pre/post-processor:
whatever decides the ids) and of the corpus text, so a changed tokenizer or text is a
different key, never a stale hit. Each entry stores its key and a digest of its ids: a
truncated, corrupted or foreign file is detected on load and rebuilt. Tokenizers without a
serializable backend (slow, Python-only ones) are not cached on disk. ``PRUNEKIT_TOKEN_CACHE=0``
turns the cache off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
log = logging.getLogger(__name__)


def token_cache_dir() -> Path | None:
    """Where entries live, or None when ``PRUNEKIT_TOKEN_CACHE`` turns the cache off."""
    if os.environ.get("PRUNEKIT_TOKEN_CACHE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    root = os.environ.get("PRUNEKIT_CACHE_DIR") or Path.home() / ".cache" / "prunekit"
    return Path(root) / "tokens"


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """SHA-256 of everything that decides the ids a fast tokenizer produces, or None when the
    tokenizer has no serialized backend to hash (then it is never cached on disk)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    digest.update(backend.to_str().encode())
    for flag in ("add_bos_token", "add_eos_token"):  # Python-side switches of some classes
        digest.update(f"{flag}={getattr(tokenizer, flag, None)!r}".encode())
    return digest.hexdigest()


def entry_key(fingerprint: str, text: str) -> str:
    digest = hashlib.sha256(f"prunekit-tokens-v{FORMAT}\n{fingerprint}\n".encode())
    digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return digest.hexdigest()


def _ids_digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.numpy().tobytes()).hexdigest()


def _read_entry(path: Path, key: str) -> torch.Tensor | None:
    """The ids stored under ``key``, or None when the file is missing, unreadable, written for
    another key or damaged (its ids no longer match their digest)."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        ids = entry["ids"]
        if entry["format"] != FORMAT or entry["key"] != key or entry["digest"] != _ids_digest(ids):
            raise ValueError("stale or damaged entry")
    except Exception as exc:  # any damage means: tokenize again and overwrite
        log.info("token cache entry %s is unusable (%s); rebuilding it", path.name, exc)
        return None
    return ids.long()


def _write_entry(path: Path, key: str, tokens: torch.Tensor) -> None:
    """Atomically (a temporary file renamed over the entry): readers never see half a file."""
    ids = tokens.to(torch.int32)
    entry = {"format": FORMAT, "key": key, "digest": _ids_digest(ids), "ids": ids}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
            torch.save(entry, handle)
        os.replace(temporary, path)
    except OSError as exc:  # a read-only or full disk costs speed, not correctness
        log.info("could not write the token cache entry %s: %s", path, exc)


def cached_tokens(
    tokenizer: Any, text: str, tokenize: Callable[[Any, str], torch.Tensor]
) -> torch.Tensor:
    """``tokenize(tokenizer, text)``, read from the disk cache when an entry for exactly this
    tokenizer and text exists, and stored there after tokenizing otherwise."""
    folder = token_cache_dir()
    fingerprint = tokenizer_fingerprint(tokenizer) if folder is not None else None
    if folder is None or fingerprint is None:
        return tokenize(tokenizer, text)
    key = entry_key(fingerprint, text)
    path = folder / f"{key[:32]}.pt"
    cached = _read_entry(path, key)
    if cached is not None:
        return cached
    tokens = tokenize(tokenizer, text)
    if tokens.numel() and int(tokens.max()) < 2**31:
        _write_entry(path, key, tokens)
    return tokens
