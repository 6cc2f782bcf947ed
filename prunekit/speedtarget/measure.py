"""The speed-up a ``--target-speedup`` run really reached on this machine.

The latency table predicts; this module checks. Once the chosen split is built, the dense model
(a copy kept aside before pruning) and the pruned model are timed the way ``bench-speed`` and the
profiler time them — the same prefill or ``generate()`` runner on the table's workload, one run of
each per round after a warm-up, medians — interleaved, so that a machine that gets busier or
quieter mid-measurement moves both sides alike.
"""

from __future__ import annotations

from prunekit.latency.profile import ProfileSettings, phase_runner, time_round_robin
from prunekit.latency.table import LatencyTable
from prunekit.models.loading import LoadedModel

MEASURE_RUNS = 5  # rounds of (dense, pruned); medians of these


def measure_speedup(
    dense: LoadedModel,
    pruned: LoadedModel,
    table: LatencyTable,
    phase: str,
    runs: int = MEASURE_RUNS,
) -> dict:
    """Medians of both models on the table's workload for ``phase``, and their ratio."""
    settings = ProfileSettings(
        batch=table.batch,
        prompt_len=table.prompt_len,
        gen_len=table.gen_len,
        phases=(phase,),
        runs=runs,
    )
    runners = {
        "dense": phase_runner(dense, phase, settings),
        "pruned": phase_runner(pruned, phase, settings),
    }
    medians = time_round_robin(runners, str(pruned.device), settings)
    return {
        "phase": phase,
        "dense_s": medians["dense"],
        "pruned_s": medians["pruned"],
        "speedup": medians["dense"] / medians["pruned"],
        "runs": runs,
        "workload": {
            "batch": table.batch,
            "prompt_len": table.prompt_len,
            "gen_len": table.gen_len,
        },
    }
