"""A lazily loaded model: the skeleton on ``meta``, weights read from the shards part by part.

Design. ``LazyModel.open(spec)`` builds the model with ``from_config`` under
``torch.device("meta")`` (no weight memory at all) and maps every tensor of it to the safetensors
shard that holds it (``model.safetensors.index.json``, or the one ``model.safetensors``). The
model is cut into *parts*: each decoder layer (an ``int``, found through the family's adapter),
the input embeddings (``EMBEDDINGS``), the LM head (``HEAD``) and everything else outside the
layers (``REST``: final norm, rotary tables, learned positions, projections). ``onload(part)``
reads the part's tensors with ``safe_open(...).get_tensor``, casts them to the model's dtype on
the model's device and installs them in the skeleton in place of the meta tensors (what
``load_state_dict(assign=True)`` does, done per tensor so that tied tensors stay one tensor);
``release(part)`` puts meta tensors back, so the memory is freed once the caller drops its own
references. ``onloaded(part)`` does both around a ``with`` block, exception safe.

A tensor is one entry however many names it has: an LM head tied to the embedding is read once,
counted once, and stays resident while either part is onloaded (a reference count per tensor).
Non-persistent buffers (rotary ``inv_freq``, Gemma's ``embed_scale``) are not in the checkpoint:
they are computed once on the host by the model's own ``_init_weights`` (the recipe transformers
itself runs after a meta-device load) and moved to the device with their part.

The lazy model is data plus onload/release: it never runs a forward pass (the engine does, see
docs/design.md, "Principles", 7). It holds no global state, so two lazy models (or one per
torch.distributed rank) in one process do not interfere. The largest single tensors can be read in
row slices (``read_rows``/``row_slices``) so that a memory budget can bound them too.

Memory. On a CPU in the checkpoint's own dtype, safetensors returns tensors backed by the
memory-mapped shard (copy-on-write: in-place edits do not touch the file), so an onloaded part
costs page cache, not anonymous memory; in another dtype or on a GPU it is a real copy of the
part's size (plus one tensor in the checkpoint's dtype while it is cast).

Limits. Safetensors checkpoints only (no ``.bin``). Checkpoint names must be the model's own
state-dict names, optionally without or with the base-model prefix (``decoder.…`` for
``model.decoder.…``); transformers' legacy renamings (``gamma``/``beta``…) are not applied, and a
checkpoint whose shapes differ from its config (a prunekit export with per-layer widths) is
refused. A part is read whole. Not thread safe: one thread onloads and releases a lazy model.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ModelNotFoundError, PrunekitError, UnsupportedArchitectureError
from prunekit.models.adapters import Adapter, adapter_for_config
from prunekit.models.dtype import resolve_dtype

EMBEDDINGS = "embeddings"
HEAD = "head"
REST = "rest"
NAMED_PARTS = (EMBEDDINGS, REST, HEAD)

Part = int | str

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class TensorSlot:
    """One tensor of the model, under every name it has (several when tied)."""

    names: tuple[str, ...]
    shape: torch.Size
    dtype: torch.dtype
    is_parameter: bool
    requires_grad: bool
    checkpoint_key: str | None = None
    shard: Path | None = None
    # Non-persistent buffers: not in the checkpoint, computed once on the host.
    host: torch.Tensor | None = None
    # (module, attribute) for every name: how the tensor is found again once the skeleton is
    # restructured (``LazyModel.follow_skeleton``).
    owners: tuple[tuple[nn.Module, str], ...] = ()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def weight_map(directory: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it."""
    index = directory / INDEX_FILE
    if index.is_file():
        entries = json.loads(index.read_text())["weight_map"]
        return {key: directory / name for key, name in entries.items()}
    single = directory / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    if any(directory.glob("*.bin")):
        raise PrunekitError(
            f"{directory} has only PyTorch .bin weights; loading layer by layer needs safetensors "
            "(re-save the model with save_pretrained(..., safe_serialization=True))"
        )
    raise ModelNotFoundError(f"{directory} has no {SINGLE_FILE} or {INDEX_FILE}")


class LazyModel:
    """A causal LM whose weights stay in their files until a part is onloaded."""

    def __init__(
        self,
        directory: str | Path,
        *,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device = "cpu",
        attn_implementation: str | None = None,
        spec: str | None = None,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.directory = Path(directory)
        self.spec = spec or str(directory)
        self.attn_implementation = attn_implementation
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, str(self.device))
        self.config = AutoConfig.from_pretrained(str(self.directory))
        self.adapter: Adapter = adapter_for_config(self.config)
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, **kwargs).eval()
        self.slots = _tensor_slots(self.model)
        for slot in self.slots:
            slot.owners = tuple(_owner(self.model, name) for name in slot.names)
        _compute_host_buffers(self.model, self.slots)
        _locate_in_checkpoint(self.slots, weight_map(self.directory), self.model)
        self._slot_by_name = {name: slot for slot in self.slots for name in slot.names}
        self._parts = self._part_slots()
        self._part_counts: Counter[Part] = Counter()
        self._slot_counts: Counter[int] = Counter()

    @classmethod
    def open(
        cls,
        spec: str,
        *,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device = "cpu",
        attn_implementation: str | None = None,
    ) -> LazyModel:
        """A lazy model for any spec ``load_model`` takes (alias, directory, .gguf, hub id)."""
        from prunekit.models.loading import resolve_model_dir

        directory = resolve_model_dir(spec)
        return cls(
            directory,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            spec=spec,
        )

    def reopen(self) -> LazyModel:
        """A new lazy model of the same files, dtype and device: a skeleton of its own, which a
        trial build can prune (and follow) while this one stays as it is."""
        return LazyModel(
            self.directory,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=self.attn_implementation,
            spec=self.spec,
        )

    # ---- structure -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.model)

    @property
    def parts(self) -> list[Part]:
        """Every part, in the order a forward pass needs them."""
        return [EMBEDDINGS, REST, *range(self.num_layers), HEAD]

    def module(self, part: Part) -> nn.Module:
        """The module a part fills: a decoder layer, an embedding, the head; REST: the model."""
        self._check_part(part)
        if isinstance(part, int):
            return self.adapter.layers(self.model)[part]
        if part == EMBEDDINGS:
            return self.model.get_input_embeddings()
        if part == HEAD:
            return self.model.get_output_embeddings()
        return self.model

    def tensor_names(self, part: Part) -> list[str]:
        """The state-dict names a part fills (tied tensors under every name)."""
        self._check_part(part)
        return [name for slot in self._parts[part] for name in slot.names]

    def part_bytes(self, *parts: Part) -> int:
        """Bytes the parts take once onloaded (a tensor shared by two parts counted once)."""
        return sum(slot.nbytes for slot in self._unique_slots(parts))

    def onloaded_bytes(self) -> int:
        return sum(slot.nbytes for slot in self.slots if self._slot_counts[id(slot)] > 0)

    def is_onloaded(self, part: Part) -> bool:
        return self._part_counts[part] > 0

    # ---- onload / release ------------------------------------------------------------------
    def onload(self, *parts: Part) -> None:
        """Read the parts' weights and install them; nothing is installed if a read fails."""
        for part in parts:
            self._check_part(part)
        needed = [
            slot
            for slot in self._unique_slots([p for p in parts if self._part_counts[p] == 0])
            if self._slot_counts[id(slot)] == 0
        ]
        values = self._read(needed)
        for slot in needed:
            _install(self.model, slot, values.pop(id(slot)))
        for part in parts:
            if self._part_counts[part] == 0:
                for slot in self._unique_slots([part]):
                    self._slot_counts[id(slot)] += 1
            self._part_counts[part] += 1

    def release(self, *parts: Part) -> None:
        """Put meta tensors back in the parts (a tensor another onloaded part uses stays)."""
        for part, times in Counter(parts).items():
            self._check_part(part)
            if self._part_counts[part] < times:
                raise ValueError(f"part {part!r} is not onloaded")
        for part in parts:
            self._part_counts[part] -= 1
            if self._part_counts[part] > 0:
                continue
            for slot in self._unique_slots([part]):
                self._slot_counts[id(slot)] -= 1
                if self._slot_counts[id(slot)] == 0:
                    _install(self.model, slot, _placeholder(slot))

    def release_all(self) -> None:
        for part in [p for p, count in self._part_counts.items() if count > 0]:
            while self._part_counts[part] > 0:
                self.release(part)

    @contextmanager
    def onloaded(self, *parts: Part) -> Iterator[Any]:
        """``with lazy.onloaded(3) as layer:`` — the part's module (a tuple for several parts),
        released when the block ends, however it ends."""
        self.onload(*parts)
        try:
            modules = tuple(self.module(part) for part in parts)
            yield modules[0] if len(modules) == 1 else modules
        finally:
            self.release(*parts)

    # ---- between two stages of a streamed run ----------------------------------------------
    def follow_skeleton(self, spill: Path | None = None) -> None:
        """Re-derive every tensor's names and the parts after the skeleton was restructured in
        place (one stage of a streamed combined run pruned it; the next one reads it).

        Depth surgery deletes modules and renumbers layers: each tensor keeps its checkpoint key
        and is found again through the modules holding it (one no module holds is dropped; so a
        tensor owned by a decoder layer module itself, not by one of its children, is lost when
        the surgery wraps that layer, which no supported family has). ``spill``: a safetensors
        directory a width stage wrote its pruned layers to; the tensors it holds are read from
        there from now on, in their pruned shapes, and those the stage added (FLAP's biases)
        join the model.
        """
        if any(self._slot_counts.values()):
            raise ValueError("the skeleton can be followed with every part released only")
        names = {id(module): name for name, module in self.model.named_modules()}
        followed = []
        for slot in self.slots:
            slot.owners = tuple((m, attr) for m, attr in slot.owners if id(m) in names)
            slot.names = tuple(_qualified(names[id(m)], attr) for m, attr in slot.owners)
            if slot.names:
                followed.append(slot)
        self.slots = followed
        if spill is not None:
            self._read_from(spill)
        self._slot_by_name = {name: slot for slot in self.slots for name in slot.names}
        self._parts = self._part_slots()
        self._part_counts.clear()
        self._slot_counts.clear()

    def _read_from(self, spill: Path) -> None:
        """Point the tensors ``spill`` holds at it (their shapes as written there)."""
        from safetensors import safe_open

        by_name = {name: slot for slot in self.slots for name in slot.names}
        for name, shard in weight_map(spill).items():
            slot = by_name.get(name)
            if slot is None:  # a tensor the stage added: the skeleton holds it on meta
                module, attr = _owner(self.model, name)
                tensor = getattr(module, attr)
                slot = TensorSlot(
                    names=(name,),
                    shape=tensor.shape,
                    dtype=tensor.dtype,
                    is_parameter=attr in module._parameters,
                    requires_grad=tensor.requires_grad,
                    owners=((module, attr),),
                )
                self.slots.append(slot)
            with safe_open(str(shard), framework="pt") as handle:
                slot.shape = torch.Size(handle.get_slice(name).get_shape())
            slot.checkpoint_key, slot.shard = name, shard

    # ---- row slices of big tensors ---------------------------------------------------------
    def num_rows(self, name: str) -> int:
        return self._checkpoint_slot(name).shape[0]

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of one tensor (e.g. ``lm_head.weight``), without reading the rest."""
        from safetensors import safe_open

        slot = self._checkpoint_slot(name)
        with safe_open(str(slot.shard), framework="pt", device="cpu") as handle:
            rows = handle.get_slice(slot.checkpoint_key)[start:stop]
        return rows.to(device=self.device, dtype=slot.dtype)

    def row_slices(self, name: str, rows_per_slice: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) for consecutive slices covering the whole tensor."""
        if rows_per_slice < 1:
            raise ValueError(f"rows_per_slice must be positive, got {rows_per_slice}")
        total = self.num_rows(name)
        for start in range(0, total, rows_per_slice):
            yield start, self.read_rows(name, start, min(start + rows_per_slice, total))

    # ---- internals -------------------------------------------------------------------------
    def _check_part(self, part: Part) -> None:
        if part not in self._parts:
            raise ValueError(
                f"unknown part {part!r}: a layer index 0..{self.num_layers - 1} or one of "
                f"{', '.join(NAMED_PARTS)}"
            )

    def _unique_slots(self, parts: Any) -> list[TensorSlot]:
        seen: dict[int, TensorSlot] = {}
        for part in parts:
            for slot in self._parts[part]:
                seen.setdefault(id(slot), slot)
        return list(seen.values())

    def _checkpoint_slot(self, name: str) -> TensorSlot:
        slot = self._slot_by_name.get(name)
        if slot is None or slot.checkpoint_key is None:
            raise ValueError(f"{name!r} is not a tensor of the checkpoint")
        return slot

    def _part_slots(self) -> dict[Part, list[TensorSlot]]:
        prefixes: dict[Part, str] = {
            index: _module_name(self.model, layer)
            for index, layer in enumerate(self.adapter.layers(self.model))
        }
        prefixes[EMBEDDINGS] = _module_name(self.model, self.model.get_input_embeddings())
        prefixes[HEAD] = _module_name(self.model, self.model.get_output_embeddings())
        parts: dict[Part, list[TensorSlot]] = {part: [] for part in prefixes}
        parts[REST] = []
        for slot in self.slots:
            owners = [
                part
                for part, prefix in prefixes.items()
                if any(name.startswith(prefix + ".") for name in slot.names)
            ]
            for part in owners or [REST]:
                parts[part].append(slot)
        return parts

    def _read(self, slots: list[TensorSlot]) -> dict[int, torch.Tensor]:
        """Each slot's tensor on the device in its dtype; shards opened once per call."""
        from safetensors import safe_open

        values: dict[int, torch.Tensor] = {}
        by_shard: dict[Path, list[TensorSlot]] = defaultdict(list)
        for slot in slots:
            if slot.host is not None:
                values[id(slot)] = slot.host.to(self.device)
            else:
                by_shard[slot.shard].append(slot)
        for shard, shard_slots in by_shard.items():
            with safe_open(str(shard), framework="pt", device="cpu") as handle:
                for slot in shard_slots:
                    tensor = handle.get_tensor(slot.checkpoint_key)
                    values[id(slot)] = tensor.to(device=self.device, dtype=slot.dtype)
                    del tensor  # free the checkpoint-dtype copy before reading the next one
        return values


def _module_name(model: nn.Module, module: nn.Module | None) -> str:
    if module is None:
        raise UnsupportedArchitectureError("the model has no input or output embeddings")
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise UnsupportedArchitectureError(f"{type(module).__name__} is not part of the model")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name), attr


def _qualified(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _tensor_slots(model: nn.Module) -> list[TensorSlot]:
    """Every distinct tensor of the (meta) model with all its names."""
    names: dict[int, list[str]] = defaultdict(list)
    tensors: dict[int, tuple[torch.Tensor, bool]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names[id(param)].append(name)
        tensors[id(param)] = (param, True)
    for name, buffer in model.named_buffers(remove_duplicate=False):
        names[id(buffer)].append(name)
        tensors[id(buffer)] = (buffer, False)
    return [
        TensorSlot(
            names=tuple(names[key]),
            shape=tensor.shape,
            dtype=tensor.dtype,
            is_parameter=is_parameter,
            requires_grad=tensor.requires_grad,
        )
        for key, (tensor, is_parameter) in tensors.items()
    ]


def _compute_host_buffers(model: nn.Module, slots: list[TensorSlot]) -> None:
    """Fill the non-persistent buffers on the host with the model's own ``_init_weights``.

    They start as NaN so a buffer the recipe does not know is an error, not silent garbage.
    The module's parameters are still on meta, where the initializers do nothing.
    """
    by_name = {name: slot for slot in slots for name in slot.names}
    for module_name, module in model.named_modules():
        owned = [
            n for n in module._non_persistent_buffers_set if module._buffers.get(n) is not None
        ]
        if not owned:
            continue
        for attr in owned:
            meta = module._buffers[attr]
            module._buffers[attr] = torch.full(meta.shape, math.nan, dtype=meta.dtype)
        with torch.no_grad():
            model._init_weights(module)
        for attr in owned:
            value = module._buffers[attr]
            qualified = f"{module_name}.{attr}" if module_name else attr
            if value.is_floating_point() and bool(torch.isnan(value).any()):
                raise UnsupportedArchitectureError(
                    f"cannot compute the non-persistent buffer {qualified} of "
                    f"{type(model).__name__} without loading the whole model"
                )
            by_name[qualified].host = value


def _locate_in_checkpoint(
    slots: list[TensorSlot], weights: dict[str, Path], model: nn.Module
) -> None:
    """Give every checkpoint tensor its key and shard; one clear error for what is missing."""
    from safetensors import safe_open

    prefix = getattr(model, "base_model_prefix", "") or ""
    missing = []
    for slot in slots:
        if slot.host is not None:
            continue
        key = next(
            (k for name in slot.names for k in _key_candidates(name, prefix) if k in weights), None
        )
        if key is None:
            missing.append(slot.names[0])
            continue
        slot.checkpoint_key, slot.shard = key, weights[key]
    if missing:
        raise ModelNotFoundError(
            f"the checkpoint lacks {len(missing)} tensor(s) of the model, e.g. {missing[0]}"
        )
    by_shard: dict[Path, list[TensorSlot]] = defaultdict(list)
    for slot in slots:
        if slot.shard is not None:
            by_shard[slot.shard].append(slot)
    for shard, shard_slots in by_shard.items():
        if not shard.is_file():
            raise ModelNotFoundError(f"weight shard {shard} is missing")
        with safe_open(str(shard), framework="pt") as handle:
            for slot in shard_slots:
                shape = tuple(handle.get_slice(slot.checkpoint_key).get_shape())
                if shape != tuple(slot.shape):
                    raise PrunekitError(
                        f"{slot.checkpoint_key} has shape {list(shape)} in {shard.name}, the "
                        f"config expects {list(slot.shape)} (a pruned export? load it eagerly)"
                    )


def _key_candidates(name: str, prefix: str) -> list[str]:
    """A state-dict name as a checkpoint may spell it: itself, without or with the base prefix."""
    candidates = [name]
    if prefix and name.startswith(prefix + "."):
        candidates.append(name[len(prefix) + 1 :])
    elif prefix:
        candidates.append(f"{prefix}.{name}")
    return candidates


def _placeholder(slot: TensorSlot) -> torch.Tensor:
    if slot.host is not None:
        return slot.host
    return torch.empty(slot.shape, dtype=slot.dtype, device="meta")


def _install(model: nn.Module, slot: TensorSlot, tensor: torch.Tensor) -> None:
    """Put ``tensor`` under every name of the slot (one object, so ties stay ties)."""
    value: torch.Tensor = (
        nn.Parameter(tensor, requires_grad=slot.requires_grad) if slot.is_parameter else tensor
    )
    for name in slot.names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if slot.is_parameter:
            module._parameters[attr] = value
        else:
            module._buffers[attr] = value
