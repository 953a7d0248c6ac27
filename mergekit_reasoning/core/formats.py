"""File formats the package reads and writes: safetensors headers, dtypes, shard names.

Every reader of a safetensors header goes through `stored_tensors` (safetensors'
own parser and checks), every dtype name through the tables here, and every
output split through `split_by_size`, so the mapped writer, the output
reservation and mergekit's writer agree by construction. Nothing here imports
torch or mergekit at module level: the reservation runs before either is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from mergekit_reasoning.core.errors import RecipeError

# safetensors' float dtype names, in the order its serializer ranks them (the widest
# last here: its header lists tensors by descending rank, then by name).
FLOAT_NAMES = ("F16", "BF16", "F32", "F64")
TORCH_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
ELEMENT_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# bytes per element of a dtype as recipes and mergekit name it
NAMED_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
# the dtypes a vector folder is stored in (float32 is lossless)
VECTOR_DTYPES = ("float32", "bfloat16")

SINGLE_SHARD = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def torch_dtype(name: str):
    """The torch dtype of a safetensors float name (`BF16` -> torch.bfloat16)."""
    import torch

    return getattr(torch, TORCH_NAMES[name])


def safetensors_name(dtype) -> str:
    """The safetensors name of a torch float dtype (torch.bfloat16 -> `BF16`)."""
    return {v: k for k, v in TORCH_NAMES.items()}[str(dtype).removeprefix("torch.")]


def stored_tensors(path) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """name -> (dtype, shape) of a safetensors file, from its header as safetensors reads
    and checks it (offsets inside the file, sizes that match the shapes); no weight is
    read and torch is not imported. Raises on a file that is not a valid safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return {
            name: (handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape()))
            for name in handle.keys()
        }


def byte_ranges(path) -> Tuple[List[Tuple[int, int]], Dict[str, int]]:
    """A safetensors file cut into byte ranges that together cover it, in file order: its
    header, then each tensor's data (and any gap or tail), and which range holds each
    tensor. safetensors checks the header (`stored_tensors`) but does not expose the
    offsets, so they are read from the header it has just checked."""
    stored_tensors(path)  # refuses an invalid file before its offsets are trusted
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    start = 8 + length
    spans = sorted(
        (start + a, start + b, name)
        for name, entry in header.items()
        if name != "__metadata__"
        for a, b in [entry["data_offsets"]]
    )
    ranges, where, position = [(0, start)], {}, start
    for begin, end, name in spans:
        if begin > position:
            ranges.append((position, begin))
        if end > begin:
            where[name] = len(ranges)
            ranges.append((begin, end))
        position = max(position, end)
    if position < size:
        ranges.append((position, size))
    return ranges, where


def broken_shard(folder) -> str:
    """Name the safetensors shard of a local folder that fails to open, if any."""
    for shard in sorted(Path(folder).glob("*.safetensors")):
        try:
            stored_tensors(shard)
        except Exception as error:
            return f"{shard.name} is truncated or corrupt ({error})"
    return ""


def refuse_outside(label: str, name: str) -> None:
    """A model's index names files inside its folder: an absolute path or a `..` step would
    read (and hash) a file that is not the model's."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise RecipeError(f"model {label}: its index points outside its folder, at {name!r}")


def weight_files(folder) -> List[str]:
    """The safetensors files of a model folder, in index order, without importing mergekit
    (whose `ShardedTensorIndex` does this for everything that runs after its import)."""
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        for name in names:
            refuse_outside(str(folder), name)
        return names
    return [SINGLE_SHARD]


def tensor_files(folder) -> Dict[str, Path]:
    """Which safetensors file of `folder` holds each tensor, from the headers."""
    files: Dict[str, Path] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        files.update(dict.fromkeys(stored_tensors(file), file))
    return files


def load_tensor(file, name: str):
    """One tensor of a safetensors file, the file opened and closed around it so that no
    mapping outlives it."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name)


def split_by_size(sizes: Sequence[int], max_shard_size: int) -> List[List[int]]:
    """Indices of tensors grouped into shards in save order, as mergekit's TensorWriter
    groups them: a shard is closed when the next tensor would take it past the limit
    (0: no limit)."""
    shards: List[List[int]] = []
    current: List[int] = []
    total = 0
    for index, size in enumerate(sizes):
        if current and max_shard_size > 0 and total + size > max_shard_size:
            shards.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        shards.append(current)
    return shards


def shard_names(count: int) -> List[str]:
    """The file names of `count` output shards, as mergekit's writer names them."""
    if count == 1:
        return [SINGLE_SHARD]
    return [f"model-{index + 1:05d}-of-{count:05d}.safetensors" for index in range(count)]
