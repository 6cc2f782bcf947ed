"""The typed settings of the pruning methods, and the groups they are built from.

Each method declares one settings dataclass (``Method.settings_type``, e.g. ``FaspSettings`` in
width/fasp.py), composed of the groups below plus its own fields; the settings a method takes
are that class's fields, so nothing else can reach it. The user-facing surface stays flat:
``prunekit.prune(model, "fasp", sparsity=0.2, allocation="cost")`` and the prune flags name
fields, and ``Method.make_settings`` builds the method's class from them (a name it lacks is
refused in one line). Every group validates its own fields (``validate`` chains through the
classes); the root checks each value's type against the annotation.

Field metadata says how a field reaches the method (``FLAG`` when absent):
- ``FLAG``: a prune flag and a keyword of ``prunekit.prune`` (``prunekit methods`` lists them);
- ``API_ONLY``: a keyword of ``prunekit.prune`` only, a benchmark or test knob that changes
  the decision and is recorded in the plan (``windows``, ``naive``, ``allocation_cost``);
- ``ENGINE``: how the executor runs, the same plan at any value (``max_memory``,
  ``state_bytes``): no flag, not in the plan;
- ``PIPELINE``: set by the pipeline (``run_dir``, from ``out``), never a setting to refuse.

This module imports no torch: the CLI reads the flags' defaults from it at import time.
"""

from __future__ import annotations

import copy
import numbers
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from prunekit.errors import SettingsError

FLAG = "flag"
API_ONLY = {"reach": "api"}
ENGINE = {"reach": "engine"}
PIPELINE = {"reach": "pipeline"}

# Greedy depth search criteria (methods/depth/criteria.py): the calibration NLL, or
# KL(dense || candidate); each also per removed parameter.
CRITERIA = ("ppl", "ppl-per-param", "kl", "kl-per-param")
# Block-level candidate sets: attention blocks, MLP blocks, both ("blocks"; "both" is its old
# name), whole layers, or every block and every whole layer ("blocks+layers").
CANDIDATE_SETS = ("attn", "mlp", "both", "blocks", "layers", "blocks+layers")
ALLOCATIONS = ("uniform", "cost")
WIDTH_GROUPS = ("mlp", "attn")
# The held-out check of bench/depth.py searches on one half of the calibration windows.
HALVES = ("first-half", "second-half")


def reach(f) -> str:
    """How a field reaches a method (module docstring): flag, api, engine or pipeline."""
    return f.metadata.get("reach", FLAG)


def flag(setting: str) -> str:
    """The command-line spelling of a setting (``restore`` is switched off by --no-restore)."""
    return "--no-restore" if setting == "restore" else "--" + setting.replace("_", "-")


@dataclass
class MethodSettings:
    """The root of every method's settings: what the pipeline lends any method."""

    # The run directory: the pipeline keeps a search's checkpoints and a width method's
    # rewritten weights there (methods write no file).
    run_dir: str | None = field(default=None, metadata=PIPELINE)

    def validate(self) -> None:
        """Type checks of every field; each group adds its range checks (chained by super)."""
        hints = _hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_instance(value, hints[f.name]):
                # A flag's spelling, but ``restore`` by name: --no-restore switches it off.
                spelled = flag(f.name) if reach(f) == FLAG and f.name != "restore" else f.name
                raise SettingsError(f"{spelled} must be {_describe(hints[f.name])}, got {value!r}")

    def record(self) -> dict[str, Any]:
        """The settings as a plan and report.json record them: every field but the engine's."""
        kept = [f.name for f in fields(self) if reach(f) != "engine"]
        return {name: copy.deepcopy(getattr(self, name)) for name in kept}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field: what ``prunekit.prune`` accepts for a method with these settings."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def flags(cls) -> tuple[str, ...]:
        """The fields that are prune flags (``Method.takes``), in the order of FLAG_NAMES (the
        targets first), a method's own flags after them."""
        own = [f.name for f in fields(cls) if reach(f) == FLAG]
        return tuple(sorted(own, key=lambda n: FLAG_NAMES.index(n) if n in FLAG_NAMES else 99))


def _range(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


def _one_of(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    """``value`` unset (the method's default) or one of ``choices``."""
    _range(
        value is None or value in choices,
        f"{name} must be one of {', '.join(choices)}, got {value!r}",
    )


@dataclass
class CalibrationSettings(MethodSettings):
    """The calibration windows a method measures on."""

    calib: str = "c4"  # c4, wikitext2, ptb or a text file
    n_samples: int = 16
    seqlen: int = 1024
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        _range(self.n_samples >= 1, f"--n-samples must be at least 1, got {self.n_samples}")
        _range(self.seqlen >= 2, f"--seqlen must be at least 2 tokens, got {self.seqlen}")
        _range(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")


@dataclass
class ExecutionSettings(MethodSettings):
    """How the executor runs a method's calibration passes: the method decides nothing from
    them (the same plan at any value, engine/executor.py)."""

    # Calibration windows per forward; None: the largest up to the device's default that fits
    # the run's budget (engine.default_batch_size, filled in by pipeline.mode before the run).
    batch_size: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.batch_size is not None:
            _range(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class ChunkedExecutionSettings(ExecutionSettings):
    """The depth runner's chunks of windows (all of a candidate's states at once, or chunks
    within a budget; methods/depth/step.py)."""

    # Bytes the chunks of a streamed run fit in, resident layers included; None: the run's
    # compute budget (--max-memory), set by the streamed pipeline.
    max_memory: int | None = field(default=None, metadata=ENGINE)
    # Bytes the states of one chunk may hold (tests and benchmarks force the two-pass step with
    # a small value); None: 1 GiB in memory, or what ``max_memory`` leaves.
    state_bytes: int | None = field(default=None, metadata=ENGINE)

    def validate(self) -> None:
        super().validate()
        for name in ("max_memory", "state_bytes"):
            value = getattr(self, name)
            _range(value is None or value >= 1, f"{name} must be at least 1 byte, got {value}")


@dataclass
class RatioTarget(MethodSettings):
    ratio: float | None = None  # target ratio_total (of the dense model's parameters)

    def validate(self) -> None:
        super().validate()
        if self.ratio is not None:
            _range(0.0 < self.ratio < 1.0, f"--ratio must be in (0, 1), got {self.ratio}")


@dataclass
class DepthTarget(RatioTarget):
    blocks: int | None = None  # blocks (block-level methods) or layers to remove
    protect_layers: list[int] = field(default_factory=list)  # never removed; -1 = last

    def validate(self) -> None:
        super().validate()
        if self.blocks is not None:
            _range(self.blocks >= 1, f"--blocks must be at least 1, got {self.blocks}")


@dataclass
class BlockCandidates(MethodSettings):
    """What a block-level depth method may remove."""

    candidates: str | None = None  # one of CANDIDATE_SETS; None: the method's default

    def validate(self) -> None:
        super().validate()
        _one_of("--candidates", self.candidates, CANDIDATE_SETS)


@dataclass
class AngularScore(MethodSettings):
    angular: bool = False  # ShortGPT, BI: arccos(cos)/pi instead of 1 - cos


@dataclass
class GreedySearchSettings(MethodSettings):
    """The greedy depth search (methods/depth/search.py)."""

    criterion: str | None = None  # one of CRITERIA; None: the method's default
    exhaustive: bool = False  # score every candidate exactly (no bound pruning)
    resume: bool = False  # continue the search the run directory holds
    # A half of the calibration windows (one of HALVES), or all of them (None).
    windows: str | None = field(default=None, metadata=API_ONLY)

    def validate(self) -> None:
        super().validate()
        _one_of("--criterion", self.criterion, CRITERIA)
        _one_of("windows", self.windows, HALVES)


@dataclass
class WidthTarget(RatioTarget):
    sparsity: float | None = None  # column ratio of the prunable groups
    targets: list[str] = field(default_factory=lambda: list(WIDTH_GROUPS))  # groups to prune

    def validate(self) -> None:
        super().validate()
        if self.sparsity is not None:
            _range(0.0 <= self.sparsity < 1.0, f"--sparsity must be in [0, 1), got {self.sparsity}")
        _range(
            bool(self.targets) and all(t in WIDTH_GROUPS for t in self.targets),
            f"--targets must be a subset of mlp,attn, got {self.targets}",
        )


@dataclass
class UniformWidth(MethodSettings):
    multiple_of: int = 1  # kept channels rounded to a multiple of this

    def validate(self) -> None:
        super().validate()
        _range(self.multiple_of >= 1, f"--multiple-of must be at least 1, got {self.multiple_of}")


@dataclass
class WidthAllocation(MethodSettings):
    allocation: str | None = None  # uniform | cost; None: cost

    def validate(self) -> None:
        super().validate()
        _range(
            self.allocation is None or self.allocation in ALLOCATIONS,
            f"--allocation must be uniform or cost, got {self.allocation!r}",
        )


@dataclass
class RestorationSettings(MethodSettings):
    restore: bool = True  # least-squares restoration of the consumers (--no-restore: off)
    damping: float = 0.1  # as a fraction of mean(diag H)

    def validate(self) -> None:
        super().validate()
        _range(self.damping >= 0, f"--damping must be >= 0, got {self.damping}")


@dataclass
class DepthShare(MethodSettings):
    """Combined methods only (methods/combined.py)."""

    depth_share: float | None = None  # the fraction of --ratio the depth stage removes (0.5)

    def validate(self) -> None:
        super().validate()
        if self.depth_share is not None:
            _range(
                0.0 < self.depth_share < 1.0,
                f"--depth-share must be in (0, 1), got {self.depth_share}",
            )


# Every group a method's settings are built from: the prune flags are their FLAG fields.
GROUPS = (
    DepthTarget,
    WidthTarget,
    BlockCandidates,
    AngularScore,
    GreedySearchSettings,
    UniformWidth,
    WidthAllocation,
    RestorationSettings,
    CalibrationSettings,
    ExecutionSettings,
    ChunkedExecutionSettings,
    DepthShare,
)
# The setting names that are prune flags, each once, in the order ``prunekit methods`` lists.
FLAG_NAMES = tuple(
    dict.fromkeys(f.name for group in GROUPS for f in fields(group) if reach(f) == FLAG)
)


def setting_default(name: str) -> Any:
    """The default of the flag setting ``name`` (one source of truth for help and behaviour)."""
    for group in GROUPS:
        for f in fields(group):
            if f.name == name:
                return f.default_factory() if callable(f.default_factory) else f.default
    raise KeyError(name)


# ---- type checks ---------------------------------------------------------------------------------
@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_instance(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (the few shapes settings use: None, bool, int, float,
    str and lists of them, and their unions); an int is a float, a bool is not a number."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is list:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "integers", str: "strings"}.get(item, _describe(item))
    names = {type(None): "None", bool: "True or False", int: "an integer", float: "a number"}
    return names.get(hint, "a string" if hint is str else getattr(hint, "__name__", str(hint)))
