"""A streamed run's export refused before any weight is read, when the method's plan is sure to
give the layers shapes the export cannot hold.

A streamed run writes its layers as they are pruned and learns the model's format only at the
end (``export.save.write_beside_weights``): a family without a heterogeneous export (no shim in
its record: OPT, Gemma 3), or ``--save-format hf``, refuses shapes no stock config describes
only after all the pruning work. Some methods give such shapes whatever the model
(``Method.non_stock_shapes``: FASP's cost allocation or value channels, FLAP's per-layer
widths), so those runs are refused here, in one line.
"""

from __future__ import annotations

from typing import Any

from prunekit.errors import SettingsError
from prunekit.methods.registry import Method
from prunekit.methods.settings import MethodSettings
from prunekit.models.families import family_for_config


def check_streamed_export(
    config: Any, method: Method, settings: MethodSettings, save_format: str
) -> None:
    """Refuse a streamed run whose export is sure to fail on its layer shapes."""
    reason = method.non_stock_shapes(settings) if method.non_stock_shapes else None
    if reason is None:
        return
    if save_format == "hf":
        raise SettingsError(
            f"--stream --save-format hf cannot hold {method.name}'s plan: {reason}; use "
            "--save-format auto or prunekit"
        )
    family = family_for_config(config)
    if family.shim is None:
        raise SettingsError(
            f"{method.name} cannot be exported streamed for {family.display_name or family.name}: "
            f"{reason}, and this family's export holds stock shapes only; use stock widths "
            "(fasp --allocation uniform --targets mlp, wanda-sp) or run it in memory"
        )
