"""One prune run and one evaluation, resident or streamed: the steps behind ``prunekit.api``.

``checks`` refuses bad input before a model loads, ``mode`` decides in memory or streamed from
the memory model, ``resident`` and ``streamed`` run the method, ``apply`` carries out what it
decided (surgery, the streamed depth export, plots, restored weights; ``checkpoints`` keeps a
search's steps for --resume), ``evaluation`` measures a model either way, ``run_report`` writes
what was done. Nothing here imports ``prunekit.api``.
"""
