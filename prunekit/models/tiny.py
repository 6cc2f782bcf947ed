"""Tiny randomly initialised models of every supported family, built in milliseconds.

Used by the unit tests and by anyone who wants to try a code path without a download. The
shapes are small but keep what matters structurally: GQA (4 query heads over 2 kv heads), biases
where the family has them, Gemma's sandwich norms and sliding-window layers, and Mistral's
sliding window on every layer (8 tokens: shorter than the test sequences, so it matters).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from prunekit.models.families import FAMILIES
from prunekit.models.tiny_sizes import (  # noqa: F401  (re-exported)
    TINY_COMMON,
    TINY_GQA,
    TINY_SLIDING_WINDOW,
    TINY_VOCAB,
)

_SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A pruned model keeps what matters and drops "
    "the rest. Perplexity measures how surprised a language model is by text it has not seen. "
    "Attention blocks mix information across positions; MLP blocks transform each position. "
) * 8

# Every tiny config of every family record, by name (a family may have variants: Mistral).
_TINY = {name: (family, build) for family in FAMILIES for name, build in family.tiny.items()}
ALL_TINY_FAMILIES = tuple(_TINY)
# The tiny models the family-parametrized unit tests run on (the rest have their own tests).
TINY_FAMILIES = tuple(name for name, (family, _) in _TINY.items() if family.tiny_matrix)


def tiny_config(family: str, **overrides: Any) -> Any:
    """A transformers config for a tiny model of ``family`` (4 layers unless overridden)."""
    if family not in _TINY:
        raise ValueError(f"no tiny config for family {family!r}; known: {ALL_TINY_FAMILIES}")
    cfg = _TINY[family][1]()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised causal LM; weights are scaled up so blocks matter (not ~identity)."""
    from transformers import AutoModelForCausalLM

    norm_init = _TINY[family][0].tiny_norm if family in _TINY else None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.08)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02)
            elif "norm" in name and norm_init is not None:
                param.normal_(*norm_init)  # the family's choice (Gemma scales by 1 + w)
    return model.eval()


@functools.cache
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with TINY_VOCAB entries, trained on a built-in text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def save_tiny(family: str, directory: str, seed: int = 0, **overrides: Any) -> str:
    """Save a tiny model and tokenizer as a normal HF directory (for CLI and reload tests)."""
    model = tiny_model(family, seed=seed, **overrides)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
