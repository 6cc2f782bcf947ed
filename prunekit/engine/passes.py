"""The engine's passes by name, each with the memory it declares (``engine/memory_terms.py``).

A method's record names the passes it runs (``Method.passes``); the memory model
(``prunekit.memory.plan_memory``) adds up their declarations, plus the weights (resident or
streamed) and, streamed, the export sink, which every run has (``engine/residency.py``).
"""

from __future__ import annotations

from prunekit.engine.chunking import DEPTH_SEARCH_MEMORY, LAYER_FORWARD_MEMORY, ONE_SHOT_MEMORY
from prunekit.engine.memory_terms import PassMemory
from prunekit.engine.sequential import (
    REPLAY_MEMORY,
    RESTORATION_MEMORY,
    SLICING_MEMORY,
    STATISTICS_MEMORY,
)

# The names a method's ``passes`` may use.
WIDTH_STATS = "width_stats"  # the width loop's statistics over every window's states
WIDTH_REPLAY = "width_replay"  # blocks pruned in the loop: attention consumer inputs kept
RESTORATION_SOLVE = "restoration"  # Gram matrices and the least-squares solve
SLICING = "slicing"  # a block's sliced weights beside the dense ones
DEPTH_SEARCH = "depth_search"  # the depth search's live branches over chunks of windows
ONE_SHOT_SCORES = "one_shot_scores"  # one trunk pass, each block's inputs and outputs scored
LAYER_FORWARD = "layer_forward"  # the trunk through whole layers (streamed perplexity)

PASSES: dict[str, PassMemory] = {
    WIDTH_STATS: STATISTICS_MEMORY,
    WIDTH_REPLAY: REPLAY_MEMORY,
    RESTORATION_SOLVE: RESTORATION_MEMORY,
    SLICING: SLICING_MEMORY,
    DEPTH_SEARCH: DEPTH_SEARCH_MEMORY,
    ONE_SHOT_SCORES: ONE_SHOT_MEMORY,
    LAYER_FORWARD: LAYER_FORWARD_MEMORY,
}


def pass_memory(name: str) -> PassMemory:
    """The declaration of the pass ``name`` (a ValueError names the known ones)."""
    try:
        return PASSES[name]
    except KeyError:
        raise ValueError(f"unknown engine pass {name!r}; known: {', '.join(PASSES)}") from None
