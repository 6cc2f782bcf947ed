"""Write safetensors weights one tensor at a time, holding at most one shard in host memory.

A streamed engine hands over each pruned layer's tensors as it finishes them (docs/design.md,
"Principles", 7); the in-memory export hands over the model's tensors one by one. Either way the
host holds at most one shard plus the tensor being added, never a copy of the whole state dict.

The files are the ones transformers' ``save_pretrained`` writes for the same tensors in the same
order (huggingface_hub's sharding rule): shards filled in order up to ``max_shard_size``, a tensor
larger than that alone in a shard of its own, ``model.safetensors`` when one shard holds
everything, otherwise ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.
N is known only at the end, so shards are written under hidden temporary names and renamed by
``close()``, which writes the index last: a crash leaves no file that looks like a finished
checkpoint. Use it inside the export's staging directory (``prunekit.export.save.staging_dir``) so
the final directory appears only when everything was written.

The caller decides what to write: tied duplicates (see ``formats.tensor_shapes``) are its business.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import safetensors.torch
import torch

from prunekit.errors import ExportError

DEFAULT_MAX_SHARD_SIZE = "2GB"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"
PARTIAL_NAME = ".model-shard-{index:05d}.safetensors.partial"
FILE_METADATA = {"format": "pt"}  # what save_pretrained puts in every file's header
# safetensors' names of the dtypes a tensor written alone, slice by slice, may have.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
# Decimal units, as huggingface_hub's parse_size_to_int ("2GB" is 2 * 10**9 bytes).
SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}


def parse_shard_size(size: int | str) -> int:
    """Bytes in a shard-size setting: an int, or a string such as "2GB" or "500KB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        text = str(size).strip()
        unit = text[-2:].upper()
        try:
            value = int(float(text[:-2]) * SIZE_UNITS[unit])
        except (KeyError, ValueError):
            raise ExportError(
                f"cannot read the shard size {size!r}; use bytes or a number with TB, GB, MB or KB"
            ) from None
    if value <= 0:
        raise ExportError(f"the shard size must be positive, got {size!r}")
    return value


@dataclass
class WrittenWeights:
    """What ``ShardWriter.close`` wrote: file names, byte and element counts, tensor -> file."""

    files: list[str]
    total_size: int  # tensor bytes, headers excluded (the index's metadata.total_size)
    parameters: int  # elements written (the index's metadata.total_parameters)
    weight_map: dict[str, str]


def saved_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """Floating tensors take the save dtype; integer and bool tensors keep theirs."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def host_copy(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor`` in ``dtype``: one allocation, the cast done by copy_.

    The writer owns its copy, so the caller may free, offload or modify the tensor right away.
    """
    if tensor.device.type == "meta":
        raise ExportError(f"tensor {name} has no data (it is on the meta device)")
    out = torch.empty(tensor.shape, dtype=dtype, device="cpu")
    out.copy_(tensor.detach())
    return out


class ShardWriter:
    """Receives (name, tensor) pairs in save order and writes them as safetensors shards.

    ``dtype``: the dtype floating tensors are saved in (None keeps each tensor's).
    ``max_shard_size``: bytes or "2GB"-style string, as in ``save_pretrained``. Host memory held:
    at most one shard of buffered copies plus the tensor being added. Use as a context manager
    (closes on success, removes its partial files on an exception) or call ``close``/``abort``.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        dtype: torch.dtype | None = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    ) -> None:
        self.directory = Path(directory)
        self.dtype = dtype
        self.max_shard_size = parse_shard_size(max_shard_size)
        self.written: WrittenWeights | None = None
        self._check_fresh_directory()
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_size = 0
        self._shards: list[tuple[Path, list[str]]] = []  # partial file, tensor names
        self._names: set[str] = set()
        self._total_size = 0
        self._parameters = 0

    def _check_fresh_directory(self) -> None:
        """Stale weights beside ours would be read as part of the checkpoint: refuse them."""
        if not self.directory.is_dir():
            raise ExportError(f"{self.directory} is not a directory")
        stale = sorted(p.name for p in self.directory.glob("model*.safetensors*"))
        if stale:
            raise ExportError(f"{self.directory} already holds weights ({stale[0]})")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Copy ``tensor`` (cast to the save dtype) into the current shard, writing it when full.

        A tensor larger than a shard goes alone into a shard of its own, copied to the host one
        row slice (at most a shard's size) at a time.
        """
        dtype = saved_dtype(tensor, self.dtype)
        size = self._reserve(name, tuple(tensor.shape), dtype)
        if size > self.max_shard_size:
            self._write_alone(name, tuple(tensor.shape), dtype, self._slices_of(name, tensor))
            return
        # A full shard is written before the next copy is made, so it never coexists with it.
        self._flush_if_full(size)
        self._buffer[name] = host_copy(name, tensor, dtype)
        self._buffer_size += size

    def add_rows(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, slices: Iterable[torch.Tensor]
    ) -> None:
        """Add a tensor of ``shape`` and ``dtype`` given as consecutive row slices (e.g. an LM
        head read from a checkpoint slice by slice): the whole tensor is never needed at once."""
        saved = dtype if self.dtype is None or not dtype.is_floating_point else self.dtype
        size = self._reserve(name, shape, saved)
        if size > self.max_shard_size:
            copies = (host_copy(name, rows, saved) for rows in slices)
            self._write_alone(name, shape, saved, copies)
            return
        self._flush_if_full(size)
        out = torch.empty(shape, dtype=saved, device="cpu")
        first = 0
        for rows in slices:
            out[first : first + rows.shape[0]].copy_(rows)
            first += rows.shape[0]
        if first != (shape[0] if shape else 1):
            raise ExportError(f"the row slices of {name} cover {first} of {shape[0]} rows")
        self._buffer[name] = out
        self._buffer_size += size

    def _reserve(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        """Check and count a new tensor; its saved size in bytes."""
        if self.written is not None:
            raise ExportError(f"cannot add {name}: the weights are already closed")
        if name in self._names:
            raise ExportError(f"tensor {name} was already written")
        numel = math.prod(shape)
        size = numel * dtype.itemsize
        self._names.add(name)
        self._total_size += size
        self._parameters += numel
        return size

    def _flush_if_full(self, size: int) -> None:
        if self._buffer and self._buffer_size + size > self.max_shard_size:
            self._flush()

    def _slices_of(self, name: str, tensor: torch.Tensor) -> Iterator[torch.Tensor]:
        """Host copies of ``tensor`` in the save dtype, at most about a shard's size each."""
        if tensor.ndim == 0:
            yield host_copy(name, tensor, saved_dtype(tensor, self.dtype))
            return
        row_bytes = max(1, math.prod(tensor.shape[1:]) * saved_dtype(tensor, self.dtype).itemsize)
        rows = max(1, self.max_shard_size // row_bytes)
        for first in range(0, tensor.shape[0], rows):
            yield host_copy(name, tensor[first : first + rows], saved_dtype(tensor, self.dtype))

    def _write_alone(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        copies: Iterable[torch.Tensor],
    ) -> None:
        """One tensor in its own shard, its bytes written as the slices arrive: the file
        safetensors' ``save_file`` writes for it (header, then the data)."""
        path = self.directory / PARTIAL_NAME.format(index=len(self._shards) + 1)
        self._shards.append((path, [name]))
        if dtype not in SAFETENSORS_DTYPES:  # an exotic dtype: assemble it (rare, small)
            safetensors.torch.save_file(
                {name: torch.cat([c.reshape(-1) for c in copies]).reshape(shape)},
                str(path),
                metadata=FILE_METADATA,
            )
            return
        size = math.prod(shape) * dtype.itemsize
        entry = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [0, size],
        }
        header = json.dumps(
            {"__metadata__": FILE_METADATA, name: entry}, separators=(",", ":")
        ).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as save_file does
        written = 0
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            for copy in copies:
                data = copy.contiguous().reshape(-1).view(torch.uint8).numpy()
                handle.write(memoryview(data))
                written += data.nbytes
        if written != size:
            raise ExportError(f"the slices of {name} hold {written} bytes, expected {size}")

    def _flush(self) -> None:
        buffer, self._buffer, self._buffer_size = self._buffer, {}, 0
        self._write_shard(buffer)

    def _write_shard(self, tensors: dict[str, torch.Tensor]) -> None:
        path = self.directory / PARTIAL_NAME.format(index=len(self._shards) + 1)
        self._shards.append((path, list(tensors)))
        safetensors.torch.save_file(tensors, str(path), metadata=FILE_METADATA)

    def close(self) -> WrittenWeights:
        """Write the last shard, give the shards their final names, then write the index."""
        if self.written is not None:
            return self.written
        if self._buffer or not self._shards:  # no tensor at all still makes one (empty) file
            self._flush()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        files = []
        for index, (partial, names) in enumerate(self._shards, start=1):
            final = WEIGHTS_NAME if count == 1 else SHARD_NAME.format(index=index, count=count)
            os.replace(partial, self.directory / final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final))
        if count > 1:
            self._write_index(weight_map)
        self.written = WrittenWeights(files, self._total_size, self._parameters, weight_map)
        return self.written

    def _write_index(self, weight_map: dict[str, str]) -> None:
        """The index as save_pretrained writes it (keys sorted, two-space indent, final newline)."""
        index = {
            "metadata": {"total_parameters": self._parameters, "total_size": self._total_size},
            "weight_map": weight_map,
        }
        partial = self.directory / f".{INDEX_NAME}.partial"
        partial.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, self.directory / INDEX_NAME)

    def abort(self) -> None:
        """Drop the buffer and delete the shards written so far (nothing final was named yet)."""
        self._buffer, self._buffer_size = {}, 0
        if self.written is None:
            for partial, _ in self._shards:
                partial.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
