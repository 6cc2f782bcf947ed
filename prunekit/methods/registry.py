"""The method types: ``Method`` (with its typed settings, ``methods/settings.py``), ``register``,
and what the pipeline lends a method (``SearchCheckpoints``, ``StageRunner``).
Every method module imports this; none imports the catalogue (``methods/catalogue.py``), which
imports them all to list and find them by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prunekit.errors import SettingsError
from prunekit.methods.settings import FLAG_NAMES, DepthShare, MethodSettings, flag

if TYPE_CHECKING:
    from prunekit.models.loading import LoadedModel
    from prunekit.plan import PruningPlan

# "combined": a depth and a width method applied one after the other (methods/combined.py)
Family = Literal["depth", "width", "combined"]


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
StageRunner = Callable[["Method", "LoadedModel", MethodSettings], "PruningPlan"]


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
    # The method's settings: a MethodSettings dataclass built from the groups of
    # ``methods/settings.py`` and its own fields; ``prune`` receives one of these.
    settings_type: type[MethodSettings] = MethodSettings
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
    non_stock_shapes: Callable[[Any], str | None] | None = None
    # The engine passes the method runs, by name (``engine/passes.py``): the memory model adds up
    # what each declares (``prunekit.memory.plan_memory``). A combined method's are its stages'.
    passes: tuple[str, ...] = ()

    @property
    def takes(self) -> tuple[str, ...]:
        """The prune flags this method reads (its settings' flag fields); any other is refused."""
        return self.settings_type.flags()

    @property
    def accepts(self) -> tuple[str, ...]:
        """Every keyword of ``prunekit.prune`` this method reads: the flags, the benchmark and
        engine knobs of its settings (``windows``, ``state_bytes``...) and ``run_dir``."""
        return self.settings_type.names()

    def check_settings(self, given: Iterable[str], spell: Callable[[str], str] = flag) -> None:
        """Refuse the first setting in ``given`` this method does not read, in one line."""
        for name in given:
            if name in self.accepts:
                continue
            # The methods registered so far: all of them once the catalogue is imported, as it
            # is wherever a method is looked up by name.
            others = [m.name for m in by_family(_METHODS.values()) if name in m.accepts]
            if name not in FLAG_NAMES and not others:
                raise SettingsError(
                    f"unknown setting {name!r}; {self.name} takes: {', '.join(self.takes)}"
                )
            if name in DepthShare.flags():
                raise SettingsError(
                    f"{spell(name)} is a setting of combined methods (a depth and a width method "
                    f"joined by '+', e.g. blockpruner+fasp), not of {self.name}"
                )
            takers = ", ".join(others) if others else "none"
            raise SettingsError(
                f"{spell(name)} is not a setting of {self.name}; methods that take it: {takers}"
            )

    def make_settings(
        self, given: Mapping[str, Any] | None = None, **values: Any
    ) -> MethodSettings:
        """This method's settings from flat ``given`` values (by field name), checked: a name
        it does not take and a bad type or value are refused in one line."""
        values = {**(given or {}), **values}
        self.check_settings(values, spell=str)
        settings = self.settings_type(**values)
        settings.validate()
        return settings


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
