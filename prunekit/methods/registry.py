"""The method types: ``Method``, ``PruneSettings``, the setting names each kind of method takes,
``register``, and what the pipeline lends a method (``SearchCheckpoints``, ``StageRunner``).
Every method module imports this; none imports the catalogue (``methods/catalogue.py``), which
imports them all to list and find them by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prunekit.errors import SettingsError

if TYPE_CHECKING:
    from prunekit.models.loading import LoadedModel
    from prunekit.plan import PruningPlan

# "combined": a depth and a width method applied one after the other (methods/combined.py)
Family = Literal["depth", "width", "combined"]


# The settings each kind of method reads (the names of PruneSettings fields). A method declares
# the ones it takes when it registers; the CLI and ``prunekit.prune`` refuse any other.
CALIBRATION = ("calib", "n_samples", "seqlen", "seed")
# Calibration windows per forward: the width statistics and the depth runner.
BATCHED = ("batch_size",)
DEPTH_TARGET = ("ratio", "blocks", "protect_layers")
DEPTH_BLOCK_UNITS = ("candidates",)  # only block-level methods choose attn/mlp/both
GREEDY_SEARCH = ("criterion", "exhaustive", "resume")
# Greedy depth search criteria (methods/depth/criteria.py): the calibration NLL, or
# KL(dense || candidate); each also per removed parameter.
CRITERIA = ("ppl", "ppl-per-param", "kl", "kl-per-param")
# Block-level candidate sets: attention blocks, MLP blocks, both ("blocks"; "both" is its old
# name), whole layers, or every block and every whole layer ("blocks+layers").
CANDIDATE_SETS = ("attn", "mlp", "both", "blocks", "layers", "blocks+layers")
WIDTH_TARGET = ("ratio", "sparsity", "targets")
UNIFORM_WIDTH = ("multiple_of",)
WIDTH_ALLOCATION = ("allocation",)  # FASP: uniform, or per-group widths from measured cost
RESTORATION = ("restore", "damping")
# Read by the API or by every method, never refused: the run directory comes from ``out`` and
# ``options`` carries method-specific extras (benchmarks, tests).
ALWAYS = ("run_dir", "options")
# Settings only a combined method (``<depth>+<width>``, methods/combined.py) takes.
COMBINED_ONLY = ("depth_share",)


@dataclass
class PruneSettings:
    """Every option a method may read; each method declares the ones it takes (``Method.takes``)."""

    ratio: float | None = None  # target ratio_total
    blocks: int | None = None  # depth: number of blocks/layers to remove
    sparsity: float | None = None  # width: column ratio of the prunable groups
    calib: str = "c4"
    n_samples: int = 16
    seqlen: int = 1024
    seed: int = 0
    # Calibration windows per forward; None: the device's default (engine.default_batch_size).
    batch_size: int | None = None
    candidates: str | None = None  # depth: one of CANDIDATE_SETS; None: the method's default
    protect_layers: list[int] = field(default_factory=list)
    criterion: str | None = None  # depth: one of CRITERIA; None: the method's default
    exhaustive: bool = False
    angular: bool = False
    targets: list[str] = field(default_factory=lambda: ["mlp", "attn"])  # width
    restore: bool = True
    multiple_of: int = 1
    # width (FASP): uniform | cost; None: cost (in memory and streamed)
    allocation: str | None = None
    damping: float = 0.1
    # the run directory: the pipeline keeps a search's checkpoints and a width method's
    # rewritten weights there (methods write no file)
    run_dir: str | None = None
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # method-specific extras
    # combined methods: the fraction of --ratio the depth stage removes (None: 0.5)
    depth_share: float | None = None

    def validate(self) -> None:
        """Range checks that need no model: every message names the option and the bad value."""
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise SettingsError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.depth_share is not None and not 0.0 < self.depth_share < 1.0:
            raise SettingsError(f"--depth-share must be in (0, 1), got {self.depth_share}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise SettingsError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if self.blocks is not None and self.blocks < 1:
            raise SettingsError(f"--blocks must be at least 1, got {self.blocks}")
        if self.batch_size is not None and self.batch_size < 1:
            raise SettingsError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.n_samples < 1:
            raise SettingsError(f"--n-samples must be at least 1, got {self.n_samples}")
        if self.seqlen < 2:
            raise SettingsError(f"--seqlen must be at least 2 tokens, got {self.seqlen}")
        if self.seed < 0:
            raise SettingsError(f"--seed must be >= 0, got {self.seed}")
        if self.candidates is not None and self.candidates not in CANDIDATE_SETS:
            raise SettingsError(
                f"--candidates must be one of {', '.join(CANDIDATE_SETS)}, got {self.candidates!r}"
            )
        if self.criterion is not None and self.criterion not in CRITERIA:
            raise SettingsError(
                f"--criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}"
            )
        if self.multiple_of < 1:
            raise SettingsError(f"--multiple-of must be at least 1, got {self.multiple_of}")
        if self.damping < 0:
            raise SettingsError(f"--damping must be >= 0, got {self.damping}")
        if self.allocation not in (None, "uniform", "cost"):
            raise SettingsError(f"--allocation must be uniform or cost, got {self.allocation!r}")
        if not self.targets or any(t not in ("mlp", "attn") for t in self.targets):
            raise SettingsError(f"--targets must be a subset of mlp,attn, got {self.targets}")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.protect_layers):
            raise SettingsError(f"--protect-layers must be integers, got {self.protect_layers}")


SETTING_NAMES = tuple(f.name for f in fields(PruneSettings))


def flag(setting: str) -> str:
    """The command-line spelling of a setting (``restore`` is switched off by --no-restore)."""
    return "--no-restore" if setting == "restore" else "--" + setting.replace("_", "-")


class SearchCheckpoints(Protocol):
    """Where a greedy search keeps its progress, lent to the method by whoever runs it (the
    pipeline keeps it as RUN/plan.partial.json, ``pipeline/checkpoints.py``): a method reads
    and writes no file itself."""

    where: str  # what a message names (the partial plan's path)

    def resumed(self) -> PruningPlan:
        """The plan an interrupted search left (a PlanError when there is none)."""
        ...

    def save(self, plan: PruningPlan) -> None:
        """Keep the (incomplete) plan of the steps taken so far."""
        ...


# (method, model, settings) -> the stage's plan, the stage carried out on the model: what a
# combined method is lent to run each of its stages (``pipeline.apply.run_stage``).
StageRunner = Callable[["Method", "LoadedModel", "PruneSettings"], "PruningPlan"]


@dataclass
class Method:
    name: str
    family: Family
    summary: str
    # (loaded model, settings) -> PruningPlan: the method's decision; carrying it out is the
    # pipeline's (``pipeline.apply.run_method``: surgery, the streamed export, the run files).
    # - depth: leaves ``loaded.model`` as it found it and returns the plan of what to remove;
    # - width: prunes ``loaded.model`` in place as it goes (layer l+1 is calibrated on the
    #   pruned layer l) and returns the plan, with the weights it rewrote on
    #   ``plan.rewritten_weights`` (the pipeline saves them beside the plan);
    # - combined: also takes ``run_stage`` (a StageRunner) and runs each stage through it.
    # A ``resumable`` method also takes ``checkpoints`` (SearchCheckpoints or None).
    # ``prunekit.surgery.apply_plan`` replays the plan on a fresh copy.
    prune: Callable[..., Any]
    # The PruneSettings fields this method reads; any other one given by the user is refused.
    takes: tuple[str, ...] = ()
    # Whether ``prune`` takes ``checkpoints=``: a greedy search saves each step there and
    # continues from it (--resume).
    resumable: bool = False
    # Whether the method runs streamed (one layer in memory at a time, ``--stream``), and why
    # not when it cannot.
    streams: bool = False
    no_stream_reason: str = "it has not been made to run layer by layer yet"
    # Why this method's plan gives the layers shapes no stock config describes on any model
    # (widths per layer, value heads narrower than query/key heads), read from the settings
    # alone; None (or returning None): they may stay stock. A streamed run reads it to refuse,
    # before any weight, an export that holds stock shapes only (``pipeline/export_check.py``).
    non_stock_shapes: Callable[[PruneSettings], str | None] | None = None
    # The engine passes the method runs, by name (``engine/passes.py``): the memory model adds up
    # what each declares (``prunekit.memory.plan_memory``). A combined method's are its stages'.
    passes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.takes if name not in SETTING_NAMES]
        if unknown:
            raise ValueError(f"method {self.name!r} declares unknown settings {unknown}")

    def check_settings(self, given: Iterable[str], spell: Callable[[str], str] = flag) -> None:
        """Refuse the first setting in ``given`` this method does not read, in one line."""
        for name in given:
            if name in self.takes or name in ALWAYS:
                continue
            if name not in SETTING_NAMES:
                raise SettingsError(
                    f"unknown setting {name!r}; {self.name} takes: {', '.join(self.takes)}"
                )
            if name in COMBINED_ONLY:
                raise SettingsError(
                    f"{spell(name)} is a setting of combined methods (a depth and a width method "
                    f"joined by '+', e.g. blockpruner+fasp), not of {self.name}"
                )
            # The methods registered so far: all of them once the catalogue is imported, as it
            # is wherever a method is looked up by name.
            others = [m.name for m in by_family(_METHODS.values()) if name in m.takes]
            takers = ", ".join(others) if others else "none"
            raise SettingsError(
                f"{spell(name)} is not a setting of {self.name}; methods that take it: {takers}"
            )


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    _METHODS[method.name] = method
    return method


def registered() -> dict[str, Method]:
    """The methods registered so far, by name (``catalogue`` imports the built-in ones)."""
    return dict(_METHODS)


def by_family(methods: Iterable[Method]) -> list[Method]:
    """``methods`` in the order the CLI lists them: by family, then by name."""
    return sorted(methods, key=lambda m: (m.family, m.name))
