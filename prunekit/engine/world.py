"""The processes that share one run: its rank, its size, and the few collectives the engine needs.

A run under ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``:
``prunekit/launcher.py``) is ``size`` processes that each hold (or stream) the whole model and
run a share of the calibration windows. Their decisions meet in two kinds of place, both in the
engine (besides, rank 0's objects are broadcast and the ranks wait for it at barriers):

- *window values* (``gather``): each rank's per-window scalars (a depth candidate's loss or
  bound on its windows, a window's NLL) become everybody's, so every rank sums them in window
  order exactly as one process would: a depth plan is bit-identical whatever the number of ranks;
- *statistics* (``sum_``): tensors summed over windows (Gram matrices, column sums, the dense
  vocabulary mass) are added across ranks, reduced onto rank 0 then broadcast from it, so every
  rank holds the same bits (an all-reduce may round differently on different ranks) and every
  rank takes the same decision. The sum is the one-process sum in another order: width plans
  match the one-process plan to float tolerance (docs/algorithms.md, "Many processes").

A ``World`` is a value handed down with the model (``LoadedModel.world``), never a module global:
the single-process world does no communication at all, and two worlds in one process (tests) do
not see each other. Every collective runs under the group's timeout, so a rank that died ends the
others with an error instead of a hang.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch

from prunekit.errors import RankFailure
from prunekit.launcher import launched

T = TypeVar("T")

# How long a collective waits for the other ranks before the run fails: long enough for rank 0's
# zero-shot evaluation, which the others wait for (PRUNEKIT_DIST_TIMEOUT, minutes).
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """``size`` processes, this one ``rank``; ``group`` is their torch.distributed process group
    (None for one process)."""

    rank: int = 0
    size: int = 1
    group: Any = field(default=None, compare=False)
    backend: str | None = None
    # The calibration windows this rank ran (the executor notes them, under many processes only):
    # report.json records every rank's.
    ran: set[int] = field(default_factory=set, compare=False, repr=False)
    # What this rank sent: collectives and payload bytes by kind (report.json, the benchmark).
    traffic: Counter = field(default_factory=Counter, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        """The rank that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def device(self) -> torch.device:
        """Where the collectives' tensors live: this rank's GPU under nccl, else the host."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ---- sharding ------------------------------------------------------------------------------
    def share(self, items: Sequence[T], rank: int | None = None) -> list[T]:
        """``rank``'s (default: this rank's) consecutive share of ``items``: the first
        ``len % size`` ranks take one more, so shares differ by at most one and may be empty."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(len(items), self.size)
        start = rank * base + min(rank, extra)
        return list(items[start : start + base + (1 if rank < extra else 0)])

    # ---- collectives ---------------------------------------------------------------------------
    def gather(self, values: Mapping[Any, T]) -> dict[Any, T]:
        """Every rank's ``values`` merged (keys are disjoint across ranks: each rank reports the
        windows it ran); the same dict on every rank."""
        if not self.distributed:
            return dict(values)
        shares: list[Any] = [None] * self.size
        self._count("gather", len(pickle.dumps(dict(values))))
        self._collective(
            torch.distributed.all_gather_object, shares, dict(values), group=self.group
        )
        merged: dict[Any, T] = {}
        for share in shares:
            merged.update(share)
        return merged

    def ordered(self, values: Mapping[Any, T], keys: Iterable[Any]) -> list[T]:
        """Every rank's ``values`` gathered, listed in the order of ``keys`` (a key no rank
        reported is a KeyError): per-window values in window order, to be added as one process
        adds them."""
        gathered = self.gather(values)
        return [gathered[key] for key in keys]

    def concat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (CPU) concatenated along dim 0, in rank order (values whose
        order does not matter: a median over every token)."""
        if not self.distributed:
            return tensor
        shares = self.gather({self.rank: tensor.cpu()})
        return torch.cat([shares[rank] for rank in range(self.size)])

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Add ``tensor`` over the ranks in place (reduce onto rank 0, broadcast from it: the
        same bits everywhere); returns it."""
        if not self.distributed:
            return tensor
        dist = torch.distributed
        # gloo reduces CPU tensors, nccl CUDA ones: a tensor elsewhere is staged (and copied back).
        staged = tensor if tensor.device == self.device else tensor.to(self.device)
        self._count("sum", 2 * tensor.numel() * tensor.element_size())  # reduce + broadcast
        self._collective(dist.reduce, staged, dst=self._global(0), group=self.group)
        self._collective(dist.broadcast, staged, src=self._global(0), group=self.group)
        if staged is not tensor:
            tensor.copy_(staged)
        return tensor

    def sum_int(self, value: int) -> int:
        """An integer summed over the ranks (token counts)."""
        if not self.distributed:
            return value
        return int(self.sum_(torch.tensor([value], dtype=torch.int64, device=self.device)).item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (a latency profile measured on rank 0)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        self._count("broadcast", len(pickle.dumps(obj)) if self.is_main else 0)
        self._collective(
            torch.distributed.broadcast_object_list, box, src=self._global(0), group=self.group
        )
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            self._collective(torch.distributed.barrier, group=self.group)

    def forget(self) -> None:
        """Clear the records (windows run, traffic): a new pass whose own are wanted."""
        self.ran.clear()
        self.traffic.clear()

    def _count(self, kind: str, payload: int) -> None:
        self.traffic[f"{kind}_calls"] += 1
        self.traffic[f"{kind}_bytes"] += payload

    def _global(self, rank: int) -> int:
        """A group rank as the global rank torch.distributed's src/dst arguments want."""
        if self.group is None:
            return rank
        return torch.distributed.get_global_rank(self.group, rank)

    def _collective(self, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except RuntimeError as error:
            if not _peer_failure(error):
                raise  # this rank's own error (a bad tensor, a misuse): its own message
            first_line = (str(error).splitlines() or [""])[0][:160]
            raise RankFailure(
                f"another of the {self.size} ranks failed or did not answer within the "
                f"collective timeout; this one (rank {self.rank}) stops too "
                f"({type(error).__name__}: {first_line})"
            ) from error


SINGLE = World()

# What the transports say when a peer went away or never answered (gloo, nccl, the store).
PEER_FAILURE_MARKERS = (
    "connection closed",
    "connection reset",
    "timed out",
    "timeout",
    "broken pipe",
)


def _peer_failure(error: RuntimeError) -> bool:
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(error, dist_error):
        return True
    message = str(error).lower()
    return any(marker in message for marker in PEER_FAILURE_MARKERS)


def backend_for(device: str | torch.device) -> str:
    """nccl for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def join_world(device: str | torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> World:
    """The launcher's world (one process when none was launched): joins the default process
    group, created here with the device's backend and ``timeout`` (``PRUNEKIT_DIST_TIMEOUT``
    minutes when set) unless the caller made one."""
    launch = launched()
    if launch is None:
        return SINGLE
    dist = torch.distributed
    backend = backend_for(device)
    if backend == "nccl":  # each rank on its own GPU: nccl and its object collectives need it set
        torch.cuda.set_device(launch.local_rank)
    if not dist.is_initialized():
        minutes = os.environ.get("PRUNEKIT_DIST_TIMEOUT")
        if minutes:
            timeout = timedelta(minutes=float(minutes))
        dist.init_process_group(backend=backend, timeout=timeout)
    return World(
        rank=dist.get_rank(), size=dist.get_world_size(), backend=dist.get_backend(), group=None
    )
