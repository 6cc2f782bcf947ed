"""Latency model of the target machine (issue 16): what a pruned model's shape costs to run.

``structure_of`` reads a model's shape, ``profile_model`` (``prunekit profile``) measures a
``LatencyTable`` on this machine, ``predict_latency`` / ``predicted_speedup`` price any shape.
Submodules are imported lazily by their users; this package imports nothing heavy.
"""
