"""Method registry: name -> method, so the CLI lists what exists and rejects what does not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prunekit.errors import SettingsError

Family = Literal["depth", "width"]


@dataclass
class PruneSettings:
    """Every option a method may read. Methods ignore the ones that are not theirs."""

    ratio: float | None = None  # target ratio_total
    blocks: int | None = None  # depth: number of blocks/layers to remove
    sparsity: float | None = None  # width: column ratio of the prunable groups
    calib: str = "c4"
    n_samples: int = 16
    seqlen: int = 1024
    seed: int = 0
    batch_size: int = 1
    candidates: str = "both"  # depth: attn | mlp | both
    protect_layers: list[int] = field(default_factory=list)
    criterion: str = "ppl"  # depth: ppl | ppl-per-param
    exhaustive: bool = False
    angular: bool = False
    targets: list[str] = field(default_factory=lambda: ["mlp", "attn"])  # width
    restore: bool = True
    multiple_of: int = 1
    damping: float = 0.1
    run_dir: str | None = None  # where the method checkpoints (resume)
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # method-specific extras

    def validate(self) -> None:
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise SettingsError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise SettingsError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if self.blocks is not None and self.blocks < 1:
            raise SettingsError(f"--blocks must be at least 1, got {self.blocks}")
        if self.n_samples < 1:
            raise SettingsError("--n-samples must be at least 1")
        if self.candidates not in ("attn", "mlp", "both"):
            raise SettingsError("--candidates must be attn, mlp or both")
        if self.criterion not in ("ppl", "ppl-per-param"):
            raise SettingsError("--criterion must be ppl or ppl-per-param")
        if self.multiple_of < 1:
            raise SettingsError("--multiple-of must be at least 1")


@dataclass
class Method:
    name: str
    family: Family
    summary: str
    # (loaded model, settings) -> PruningPlan. Contract: the method leaves ``loaded.model``
    # pruned (width methods must, since layer l+1 is calibrated on the pruned layer l) and
    # returns the plan that ``prunekit.surgery.apply_plan`` replays on a fresh copy.
    prune: Callable[..., Any]


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise SettingsError(
            f"unknown method {name!r}; known: {', '.join(sorted(_METHODS)) or '(none yet)'}"
        ) from None


def all_methods() -> list[Method]:
    _load_builtin_methods()
    return sorted(_METHODS.values(), key=lambda m: (m.family, m.name))


def _load_builtin_methods() -> None:
    # Importing the packages registers their methods; done lazily to keep `import prunekit` fast.
    import prunekit.methods.depth
    import prunekit.methods.width  # noqa: F401
