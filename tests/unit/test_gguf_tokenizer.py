"""GGUF tokenizer metadata: llama.cpp tokenizes like the Hugging Face tokenizer it came from.

A byte-level BPE tokenizer is trained in a second for each pre-tokenizer llama.cpp knows by name
(GPT-2, SmolLM's split digits, Llama 3, Qwen2), written with a tiny model, and llama.cpp's ids
on a probe text with digits, contractions, punctuation and newlines must equal HF's.
"""

from __future__ import annotations

import pytest

from prunekit.errors import ExportError
from prunekit.export.gguf import export_gguf
from prunekit.export.gguf.bpe_vocab import _LLAMA3_SPLIT, _QWEN2_SPLIT, pre_name
from prunekit.models.loading import from_model
from prunekit.models.tiny import _SAMPLE_TEXT, TINY_VOCAB, tiny_model
from tests.unit.gguf_helpers import llama_model

PROBE = "In 2024 we've had 12345 tokens,\n\n  don't we? Costs: $3.50 (approx.) -- fine!\tEnd"


def trained_tokenizer(pre: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "gpt-2")
    steps = {
        "gpt-2": byte_level,
        "smollm": pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        ),
        "llama-bpe": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]
        ),
        "qwen2": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
        ),
    }
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = steps[pre]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<|endoftext|>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The probe itself is in the training text, so merges span its chunks: with a wrong
    # pre-tokenizer llama.cpp would cut them elsewhere and find other ids.
    tok.train_from_iterator([_SAMPLE_TEXT + PROBE * 20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_llama_cpp_tokenizes_like_hf(pre, tmp_path):
    tokenizer = trained_tokenizer(pre)
    loaded = from_model(tiny_model("llama"), tokenizer, spec="tiny")
    result = export_gguf(loaded, tmp_path / "t.gguf", gguf_type="f32")
    want = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    with llama_model(result.path) as llm:
        assert llm.metadata["tokenizer.ggml.pre"] == pre
        assert llm.tokenize(PROBE.encode(), add_bos=False, special=False) == want


def test_unknown_pre_tokenizer_is_refused():
    data = {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}
    with pytest.raises(ExportError, match="unrecognised BPE pre-tokenizer"):
        pre_name(data)
