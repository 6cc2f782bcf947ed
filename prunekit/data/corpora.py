"""Text corpora by name or path, read offline from $PRUNEKIT_DATA_DIR when possible.

Resolution order for a name: an explicit file path; ``$PRUNEKIT_DATA_DIR/corpora/<file>``;
the Hugging Face hub through ``datasets`` (optional). Joining follows docs/protocol.md ("Data,
offline first"): WikiText-2 rows with "\\n\\n", PTB sentences and C4 documents with " ".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import DataError, MissingExtraError


@dataclass(frozen=True)
class Corpus:
    """Where a named dataset lives offline and online, and how its rows are joined."""

    name: str
    offline_file: str
    joiner: str
    hub: tuple[str, str | None, str]  # (path, config, split) for datasets.load_dataset
    hub_field: str
    note: str = ""


CORPORA: dict[str, Corpus] = {
    "wikitext2": Corpus(
        "wikitext2", "wikitext2_test.txt", "\n\n", ("wikitext", "wikitext-2-raw-v1", "test"), "text"
    ),
    "ptb": Corpus(
        "ptb", "ptb_test.txt", " ", ("ptb_text_only", "penn_treebank", "test"), "sentence"
    ),
    "c4": Corpus(
        "c4",
        "c4_sample.jsonl",
        " ",
        ("allenai/c4", "en", "validation"),
        "text",
        note="offline: a 2,000-document sample of C4 validation, not the standard subset",
    ),
}


def data_dir() -> Path | None:
    value = os.environ.get("PRUNEKIT_DATA_DIR")
    return Path(value) if value else None


def known_corpora() -> list[str]:
    return sorted(CORPORA)


def read_text_file(path: Path, joiner: str = " ") -> str:
    """.txt as is; .jsonl / .parquet: the ``text`` field of every row, joined."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}:{number}: expected a JSON object with a 'text' field"
                ) from exc
        return joiner.join(rows)
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError("pyarrow", "data", f"reading {path.name}") from None
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise DataError(f"{path}: no 'text' column (columns: {table.column_names})")
        return joiner.join(str(t) for t in table.column("text").to_pylist())
    return path.read_text(encoding="utf-8")


def _offline_text(corpus: Corpus, path: Path) -> str:
    if corpus.name == "ptb":
        # One sentence per line; the protocol joins the sentences with " ".
        lines = path.read_text(encoding="utf-8").splitlines()
        return corpus.joiner.join(lines)
    if path.suffix == ".jsonl":
        return read_text_file(path, corpus.joiner)
    return path.read_text(encoding="utf-8")  # WikiText-2 is stored already joined


def _hub_text(corpus: Corpus) -> str:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"dataset {corpus.name!r} is not available offline (set PRUNEKIT_DATA_DIR to the "
            f"folder holding corpora/{corpus.offline_file}) and the 'datasets' package is not "
            "installed"
        ) from None
    path, config, split = corpus.hub
    try:
        if corpus.name == "c4":
            ds = datasets.load_dataset(
                path, data_files={split: "en/c4-validation.00000-of-00008.json.gz"}, split=split
            )
        else:
            ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:
        raise DataError(
            f"dataset {corpus.name!r}: not found under PRUNEKIT_DATA_DIR and the hub failed: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    return corpus.joiner.join(ds[corpus.hub_field])


def check_dataset(name_or_path: str) -> None:
    """Fail fast (before a model is loaded) on a name that is neither a corpus nor a file."""
    path = Path(name_or_path).expanduser()
    if path.is_file() or name_or_path.lower() in CORPORA:
        return
    if path.suffix.lower() in (".txt", ".jsonl", ".parquet", ".json"):
        raise DataError(f"data file not found: {path}")
    raise DataError(
        f"unknown dataset {name_or_path!r}; known: {', '.join(known_corpora())}, "
        "or a path to a .txt/.jsonl/.parquet file"
    )


def load_corpus(name_or_path: str) -> str:
    """The joined text of a named corpus or a local file. Raises DataError when empty/missing."""
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in (".txt", ".jsonl", ".parquet", ".json") or path.is_file():
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        text = read_text_file(path)
    else:
        check_dataset(name_or_path)
        corpus = CORPORA[name_or_path.lower()]
        root = data_dir()
        offline = root / "corpora" / corpus.offline_file if root else None
        text = (
            _offline_text(corpus, offline) if offline and offline.is_file() else _hub_text(corpus)
        )
    if not text.strip():
        raise DataError(f"dataset {name_or_path!r} holds no text")
    return text


def corpus_source(name_or_path: str) -> str:
    """Where ``load_corpus`` reads this name from (for reports)."""
    corpus = CORPORA.get(name_or_path.lower())
    if corpus is None:
        return str(Path(name_or_path).expanduser())
    root = data_dir()
    if root and (root / "corpora" / corpus.offline_file).is_file():
        return f"PRUNEKIT_DATA_DIR/corpora/{corpus.offline_file}" + (
            f" ({corpus.note})" if corpus.note else ""
        )
    return "hub:" + "/".join(p for p in corpus.hub if p)
