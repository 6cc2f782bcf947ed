"""The sizes the tiny random test models share: the family records build their tiny configs from
them (``prunekit.models.families``), ``prunekit.models.tiny`` builds the models. A module of its
own so that the records need not import ``tiny`` (which imports the records)."""

TINY_VOCAB = 320
TINY_SLIDING_WINDOW = 8
# The shapes most tiny configs share (the family records build their configs from them).
TINY_COMMON = dict(vocab_size=TINY_VOCAB, max_position_embeddings=256, tie_word_embeddings=False)
TINY_GQA = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
