"""Physical width surgery: slice coupled channels out of producer rows and consumer columns.

The same primitives serve the methods (which prune in place while calibrating) and
``apply_width_plan`` (which replays a saved plan on a fresh model), so a replay is the same code
path. A plan's per-layer entry is ``{"mlp": [kept intermediate channels]}`` plus either
``{"attn_v": [[kept value channels] per kv head]}`` or ``{"attn_heads": [kept kv heads]}``.
Weights the method rewrote (restored or bias-compensated consumers) are replayed from
``restored.safetensors`` in the run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import PlanError
from prunekit.models.adapters import Adapter, AttentionChannels, MLPChannels
from prunekit.models.attention import enable_variable_heads
from prunekit.models.loading import LoadedModel
from prunekit.plan import PruningPlan

RESTORED_FILE = "restored.safetensors"


def slice_rows(linear: nn.Linear, rows: Sequence[int] | torch.Tensor) -> None:
    """Keep only output rows ``rows`` of ``linear`` (and their bias entries)."""
    index = torch.as_tensor(rows, dtype=torch.long, device=linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, index).contiguous())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, index).contiguous())
    linear.out_features = index.numel()


def slice_columns(linear: nn.Linear, columns: Sequence[int] | torch.Tensor) -> None:
    """Keep only input columns ``columns`` of ``linear`` (its bias is untouched)."""
    index = torch.as_tensor(columns, dtype=torch.long, device=linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(1, index).contiguous())
    linear.in_features = index.numel()


def set_consumer(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Replace a consumer's weight (and bias: one is created if the stock module has none)."""
    like = linear.weight
    linear.weight = nn.Parameter(weight.to(device=like.device, dtype=like.dtype).contiguous())
    linear.in_features = weight.shape[1]
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(device=like.device, dtype=like.dtype).contiguous())


def slice_mlp(channels: MLPChannels, kept: Sequence[int]) -> None:
    for producer in channels.producers:
        slice_rows(producer, kept)
    slice_columns(channels.consumer, kept)


def value_columns(channels: AttentionChannels, kept_per_kv: Sequence[Sequence[int]]) -> list[int]:
    """o_proj columns (h, d) for every query head h and kept value channel d of its kv head."""
    dv, per_kv = channels.v_head_dim, channels.queries_per_kv
    return [h * dv + d for h in range(channels.num_heads) for d in kept_per_kv[h // per_kv]]


def slice_value_channels(
    channels: AttentionChannels, kept_per_kv: Sequence[Sequence[int]], adapter: Adapter
) -> None:
    """Keep value channels per kv head (same count in each): v_proj rows and o_proj columns."""
    if len({len(k) for k in kept_per_kv}) != 1 or len(kept_per_kv) != channels.num_kv_heads:
        raise PlanError("value channels must keep the same count in every kv head")
    dv = channels.v_head_dim
    rows = [g * dv + d for g, kept in enumerate(kept_per_kv) for d in kept]
    columns = value_columns(channels, kept_per_kv)
    slice_rows(channels.v_proj, rows)
    slice_columns(channels.o_proj, columns)
    enable_variable_heads(channels.module, adapter)


def head_columns(channels: AttentionChannels, kept_groups: Sequence[int], size: int) -> list[int]:
    """Rows/columns of the query heads (of size ``size``) belonging to the kept kv groups."""
    per_kv = channels.queries_per_kv
    heads = [h for h in range(channels.num_heads) if h // per_kv in set(kept_groups)]
    return [h * size + d for h in heads for d in range(size)]


def slice_heads(channels: AttentionChannels, kept_groups: Sequence[int], adapter: Adapter) -> None:
    """Keep whole kv groups (a kv head and its query heads): q/k/v rows and o_proj columns."""
    hd, dv = channels.head_dim, channels.v_head_dim
    slice_rows(channels.q_proj, head_columns(channels, kept_groups, hd))
    slice_rows(channels.k_proj, [g * hd + d for g in kept_groups for d in range(hd)])
    slice_rows(channels.v_proj, [g * dv + d for g in kept_groups for d in range(dv)])
    slice_columns(channels.o_proj, head_columns(channels, kept_groups, dv))
    enable_variable_heads(channels.module, adapter)


def apply_width_plan(
    loaded: LoadedModel, plan: PruningPlan, run_dir: str | Path | None = None
) -> None:
    """Replay a width plan on a fresh copy of its base model, restored weights included."""
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.layers(model)
    for key, entry in plan.kept_channels.items():
        layer = layers[int(key)]
        if "attn_v" in entry:
            channels = adapter.attention_channels(layer, model.config)
            slice_value_channels(channels, entry["attn_v"], adapter)
        if "attn_heads" in entry:
            channels = adapter.attention_channels(layer, model.config)
            slice_heads(channels, entry["attn_heads"], adapter)
        if "mlp" in entry:
            slice_mlp(adapter.mlp_channels(layer), entry["mlp"])
    restored = plan.extra.get("restored_weights")
    if restored:
        load_rewritten_consumers(model, _restored_path(restored, run_dir))


def load_rewritten_consumers(model: nn.Module, path: Path) -> None:
    """Set the weights (and biases) saved by a method that rewrote consumers."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    modules = dict(model.named_modules())
    for name in sorted({key.rsplit(".", 1)[0] for key in tensors}):
        if name not in modules:
            raise PlanError(f"{path} names module {name!r}, which the model does not have")
        set_consumer(modules[name], tensors[f"{name}.weight"], tensors.get(f"{name}.bias"))


def save_rewritten_consumers(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _restored_path(name: str, run_dir: str | Path | None) -> Path:
    if run_dir is None:
        raise PlanError(
            "this width plan rewrote weights (restoration or bias compensation): pass the run "
            f"directory that holds {name}"
        )
    path = Path(run_dir) / name
    if not path.is_file():
        raise PlanError(f"the plan's rewritten weights are missing: {path}")
    return path
