"""Combined methods: a depth method and a width method applied one after the other.

``blockpruner+fasp`` removes blocks with BlockPruner, then narrows the surviving blocks with FASP
on the depth-pruned model (its statistics and its restoration are computed there, as running
FASP after BlockPruner would); ``fasp+blockpruner`` runs the other way round. Any registered
depth method pairs with any registered width method; the name is the order.

Targets. With ``ratio`` R (ratio_total against the dense model) the depth stage takes
``depth_share`` · R; the other stage then removes what is left of R · P0 (P0: dense parameters),
its own ratio computed from the parameters the first stage really removed, so the result reaches
R within one block or channel of granularity. Without ``ratio`` each stage gets its own target:
``blocks`` for the depth stage and ``sparsity`` for the width stage (``prune_combined`` takes two
explicit settings objects, for callers such as the speed-target search).

The settings of ``<first>+<second>`` are one dataclass built from both stages' settings
classes and ``DepthShare`` (``combined_settings_type``): it takes exactly what either stage
takes. Each stage receives its own class, filled from it (``stage_settings``: ``--criterion``
to BlockPruner, ``--multiple-of`` to FASP, calibration settings to both). The plan is one
``PruningPlan`` with ordered ``stages`` (see prunekit/plan.py); ``prunekit.surgery.apply_plan``
replays it.

A combined method decides the targets and the order; each stage runs through the ``run_stage``
it is lent (``pipeline.apply.run_stage``), which carries that stage's decision out (the depth
surgery, the restored weights) before the next stage is calibrated on the result.

Streamed, the second stage runs on what the first left while the weights stay in their files
(``pipeline/streamed_stages.py``), and the export receives each layer once, after both stages.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from functools import cache, partial

from prunekit.errors import SettingsError
from prunekit.methods.registry import Method, StageRunner, by_family, registered
from prunekit.methods.settings import DepthShare, MethodSettings
from prunekit.models.loading import LoadedModel, count_parameters
from prunekit.plan import PruningPlan

log = logging.getLogger(__name__)

SEPARATOR = "+"
DEFAULT_DEPTH_SHARE = 0.5
# The targets a combined run splits (ratio) or routes by family (blocks, sparsity).
TARGETS = ("ratio", "blocks", "sparsity")


def combined_method(name: str, methods: Mapping[str, Method]) -> Method:
    """The method ``<first>+<second>``: one depth and one width method of ``methods`` (the
    catalogue's, by name), in that order.

    Refused in one line: a name that is not two parts, an unknown part, two methods of the same
    family."""
    parts = name.split(SEPARATOR)
    if len(parts) != 2 or not all(parts):
        raise SettingsError(
            f"a combined method is two methods joined by '{SEPARATOR}' (a depth and a width "
            f"method, e.g. blockpruner+fasp), got {name!r}"
        )
    stages = [_part(part, name, methods) for part in parts]
    first, second = stages
    if first.family == second.family:
        raise SettingsError(
            f"{name} combines two {first.family} methods; a combined method is one depth and "
            "one width method, e.g. blockpruner+fasp"
        )
    width = first if first.family == "width" else second
    return Method(
        name=name,
        family="combined",
        summary=f"{first.name} then {second.name} on the model it left",
        prune=partial(prune_split, first, second),
        settings_type=combined_settings_type(first.settings_type, second.settings_type),
        streams=True,
        non_stock_shapes=partial(_width_stage_shapes, width),
        passes=first.passes + second.passes,
    )


@cache
def combined_settings_type(first: type, second: type) -> type[MethodSettings]:
    """The settings of a combined method: every field of both stages' settings classes and
    ``depth_share`` (one class per pair, so the same name builds the same type)."""
    name = f"Combined{first.__name__}{second.__name__}"
    return dataclasses.make_dataclass(name, [], bases=(DepthShare, first, second))


def _width_stage_shapes(width: Method, settings: MethodSettings) -> str | None:
    """Why the width stage gives the layers shapes no stock config describes (its settings are
    the combined method's, routed to it)."""
    stage = stage_settings(width, settings)
    reason = width.non_stock_shapes(stage) if width.non_stock_shapes else None
    return f"its {width.name} stage: {reason}" if reason else None


def _part(part: str, name: str, methods: Mapping[str, Method]) -> Method:
    method = methods.get(part)
    if method is None:
        known = ", ".join(m.name for m in by_family(methods.values()))
        raise SettingsError(f"unknown method {part!r} in {name!r}; known: {known}")
    if method.family not in ("depth", "width"):
        raise SettingsError(f"{name}: {part} is not a depth or a width method")
    return method


def stage_settings(method: Method, settings: MethodSettings, **target: object) -> MethodSettings:
    """The settings of one stage, of its method's class: the fields of ``settings`` that class
    has (targets aside: the run directory and the engine knobs too), then ``target`` (the
    stage's own target, or any other field to set)."""
    routed = {
        name: getattr(settings, name)
        for name in method.settings_type.names()
        if name not in TARGETS and hasattr(settings, name)
    }
    stage = method.settings_type(**{**routed, **target})
    stage.validate()
    return stage


def prune_split(
    first: Method,
    second: Method,
    loaded: LoadedModel,
    settings: MethodSettings,
    *,
    run_stage: StageRunner,
) -> PruningPlan:
    """The ``prune`` of a combined method: resolve each stage's target, run both stages."""
    name = f"{first.name}{SEPARATOR}{second.name}"
    if settings.ratio is None:
        return _explicit_targets(name, first, second, loaded, settings, run_stage)
    if settings.blocks is not None or settings.sparsity is not None:
        raise SettingsError(
            f"{name}: give --ratio (split by --depth-share) or each stage's own target "
            "(--blocks for the depth stage, --sparsity for the width stage), not both"
        )
    share = DEFAULT_DEPTH_SHARE if settings.depth_share is None else settings.depth_share
    dense = count_parameters(loaded.model)
    first_ratio = settings.ratio * (share if first.family == "depth" else 1.0 - share)
    first_settings = stage_settings(first, settings, ratio=first_ratio)

    def second_target() -> MethodSettings:
        left = count_parameters(loaded.model)
        removed = dense - left
        remaining = settings.ratio * dense - removed
        if remaining <= 0:
            raise SettingsError(
                f"{name}: the {first.name} stage alone removed {removed / dense:.4f} of the "
                f"parameters, reaching --ratio {settings.ratio}; lower the share of that stage "
                "(--depth-share)"
            )
        return stage_settings(second, settings, ratio=remaining / left)

    split = {"ratio": settings.ratio, "depth_share": share}
    record = {**settings.record(), "depth_share": share}
    stages = [(first, first_settings), (second, second_target)]
    return run_stages(loaded, name, stages, record, split, run_stage=run_stage)


def _explicit_targets(
    name: str,
    first: Method,
    second: Method,
    loaded: LoadedModel,
    settings: MethodSettings,
    run_stage: StageRunner,
) -> PruningPlan:
    """Without --ratio: --blocks goes to the depth stage, --sparsity to the width stage."""
    if settings.depth_share is not None:
        raise SettingsError(f"{name}: --depth-share splits --ratio; give --ratio with it")
    if settings.blocks is None or settings.sparsity is None:
        raise SettingsError(
            f"{name} needs --ratio R (split by --depth-share) or both stages' own targets: "
            "--blocks K (depth) and --sparsity S (width)"
        )
    targets = {"depth": {"blocks": settings.blocks}, "width": {"sparsity": settings.sparsity}}
    stages = [(m, stage_settings(m, settings, **targets[m.family])) for m in (first, second)]
    record = settings.record()
    return run_stages(loaded, name, stages, record, None, run_stage=run_stage)


def prune_combined(
    loaded: LoadedModel,
    depth_method: str | Method,
    width_method: str | Method,
    depth_settings: MethodSettings,
    width_settings: MethodSettings,
    *,
    run_stage: StageRunner,
) -> PruningPlan:
    """Apply ``depth_method`` then ``width_method`` to ``loaded`` in place, each with its own
    explicit settings (e.g. ``blocks=k`` and ``sparsity=s``), each stage through ``run_stage``
    (``prunekit.pipeline.apply.run_stage``); return the combined plan.

    The width stage runs on the depth-pruned model. Its restored weights are saved to
    ``width_settings.run_dir`` when it has one (as any width run); replay the plan with that
    directory."""
    # Methods named by string: the built-in ones, registered by importing their packages (which
    # import nothing of this module, so no import circle).
    import prunekit.methods.depth
    import prunekit.methods.width  # noqa: F401

    methods = registered()
    depth = (
        _part(depth_method, "prune_combined", methods)
        if isinstance(depth_method, str)
        else depth_method
    )
    width = (
        _part(width_method, "prune_combined", methods)
        if isinstance(width_method, str)
        else width_method
    )
    if (depth.family, width.family) != ("depth", "width"):
        raise SettingsError(
            f"prune_combined takes a depth then a width method, got {depth.name} "
            f"({depth.family}) and {width.name} ({width.family})"
        )
    typed = []
    for method, settings in ((depth, depth_settings), (width, width_settings)):
        given = [f.name for f in dataclasses.fields(settings) if _differs(settings, f)]
        method.check_settings(given, spell=str)
        typed.append(settings_of(method, settings))
    depth_settings, width_settings = typed
    name = f"{depth.name}{SEPARATOR}{width.name}"
    record = {"depth": depth_settings.record(), "width": width_settings.record()}
    stages = [(depth, depth_settings), (width, width_settings)]
    return run_stages(loaded, name, stages, record, None, run_stage=run_stage)


def settings_of(method: Method, settings: MethodSettings) -> MethodSettings:
    """``settings`` as ``method``'s own settings class (its fields copied, targets included),
    validated."""
    if not isinstance(settings, method.settings_type):
        names = [n for n in method.settings_type.names() if hasattr(settings, n)]
        settings = method.settings_type(**{n: getattr(settings, n) for n in names})
    settings.validate()
    return settings


def _differs(settings: MethodSettings, field: dataclasses.Field) -> bool:
    """Whether a setting was given (differs from its default): what the method must take."""
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    return getattr(settings, field.name) != default


def run_stages(
    loaded: LoadedModel,
    name: str,
    stages: list,
    settings_record: dict,
    split: dict | None,
    *,
    run_stage: StageRunner,
) -> PruningPlan:
    """Run each (method, settings) stage on ``loaded`` in order through ``run_stage``, which
    carries each stage's decision out; ``settings`` may be a callable returning them, evaluated
    once the stages before have run (a target that depends on what they removed). Returns the
    combined plan."""
    dense = count_parameters(loaded.model)
    # A streamed skeleton's fingerprint is read from the shards (on meta it has none).
    identity = loaded.residency.identity(loaded) if loaded.residency else loaded.identity()
    plans: list[PruningPlan] = []
    summaries: list[dict] = []
    for number, (method, settings) in enumerate(stages, start=1):
        settings = settings() if callable(settings) else settings
        before = count_parameters(loaded.model)
        log.info("%s stage %d: %s", name, number, method.name)
        plan = run_stage(method, loaded, settings)
        if not plan.complete:
            raise SettingsError(f"{name}: stage {number} ({method.name}) did not finish")
        plans.append(plan)
        after = count_parameters(loaded.model)
        if number < len(stages) and not loaded.adapter.layers(loaded.model):
            following = stages[number][0].name
            raise SettingsError(
                f"{name}: stage {number} ({method.name}) removed every layer, which leaves "
                f"{following} nothing to prune; lower its target"
            )
        summaries.append(stage_summary(method, settings, before, after, dense, plan.settings))
    extra = {"order": [m.name for m, _ in stages], "stages": summaries}
    if split is not None:
        extra["split"] = split
    return PruningPlan(
        method=name,
        model=identity,
        settings=settings_record,
        extra=extra,
        stages=[plan.to_dict() for plan in plans],
    )


def stage_summary(
    method: Method,
    settings: MethodSettings,
    before: int,
    after: int,
    dense: int,
    resolved: dict | None = None,
) -> dict:
    """What one stage asked for and removed: its target, its ratio of the model it was given,
    and the ratio_total (against the dense model) after it. ``resolved``: the stage plan's own
    settings, which name the defaults the method chose (criterion, allocation...) where the
    request left them None."""
    resolved = resolved or {}
    return {
        "method": method.name,
        "family": method.family,
        "target": {k: v for k in TARGETS if (v := getattr(settings, k, None)) is not None},
        "params_before": before,
        "params_after": after,
        "removed_params": before - after,
        "ratio_of_stage_input": 1.0 - after / before,
        "ratio_total_after": 1.0 - after / dense,
        "settings": {
            k: v if v is not None else resolved.get(k)
            for k, v in settings.record().items()
            if k in method.takes and k not in TARGETS
        },
    }


def combined_record(plan: PruningPlan) -> dict:
    """The report.json entries of a combined run: the split of --ratio (when there was one)
    and each stage's method, settings, target and ratios."""
    record: dict = {"stages": plan.extra.get("stages", [])}
    if plan.extra.get("split") is not None:
        record["split"] = plan.extra["split"]
    return record
