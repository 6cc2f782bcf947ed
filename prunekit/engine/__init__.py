"""Layer-by-layer execution shared by the depth search and the width calibration pass."""

from prunekit.engine.layerwise import (
    LayerContext,
    batches,
    capture_layer_context,
    embed,
    run_block,
    run_layer,
)

__all__ = ["LayerContext", "batches", "capture_layer_context", "embed", "run_block", "run_layer"]
