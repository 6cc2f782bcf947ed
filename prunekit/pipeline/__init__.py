"""One prune run and one evaluation, resident or streamed: the steps behind ``prunekit.api``.

``checks`` refuses bad input before a model loads, ``mode`` decides in memory or streamed from
the memory model, ``resident`` and ``streamed`` run the method, ``evaluation`` measures a
model either way, ``run_report`` writes what was done. Nothing here imports ``prunekit.api``.
"""
