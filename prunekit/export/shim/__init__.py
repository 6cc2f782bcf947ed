"""Modeling files written next to heterogeneous exports, one per family wiring.

A shim is a self-contained transformers modeling file (torch + transformers only) that builds each
decoder layer from ``config.per_layer_config[i]``. It is copied into the export directory and
named in ``auto_map``; prunekit imports the same file as a module, so both loaders run one code.
Which shim a family uses (and what it must tell the shim) is its record's ``shim`` and
``shim_settings`` (``prunekit.models.families``).
"""

from __future__ import annotations

from prunekit.errors import UnsupportedArchitectureError
from prunekit.export.shim.spec import LLAMA_SHIM, SHIM_DIR, Shim  # noqa: F401  (re-exported)


def shims_by_family() -> dict[str, Shim]:
    """Adapter family -> its shim, for the families that have one."""
    from prunekit.models.families import FAMILIES  # the records import this module

    return {f.name: f.shim for f in FAMILIES if f.shim is not None}


def __getattr__(name: str) -> dict[str, Shim]:
    # ``SHIMS`` is read from the family records when first asked for (they import this module).
    if name == "SHIMS":
        return shims_by_family()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shim_for_family(family: str) -> Shim:
    shims = shims_by_family()
    try:
        return shims[family]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"{family}: this pruned model has layers of different shapes, and the heterogeneous "
            f"export covers only {', '.join(sorted(shims))} so far; prune whole layers (or keep "
            "widths uniform) to export it in the stock 'hf' format"
        ) from None


def shim_for_model_type(model_type: str) -> Shim | None:
    """The shim whose config declares ``model_type`` (None for stock model types)."""
    for shim in {s.module: s for s in shims_by_family().values()}.values():
        if shim.model_type == model_type:
            return shim
    return None
