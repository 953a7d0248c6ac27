"""Each output tensor's name, dtype and shape, known before any arithmetic.

The mapped writer (`shard_writer.py`) lays the output files out before the
merge, so it needs every output tensor's header up front. They follow from
mergekit's plan and the inputs' safetensors headers, without reading a weight:
the shape is the target's (the merge keeps it, vocabulary rows included); the
dtype is the recipe's `out_dtype`, else the inputs' common dtype after the load
dtype mergekit applies (as `kernel.merge_tensor` rounds). Whenever a tensor is
not plainly resolvable this way (pickled weights, mergekit's checkpoint
conversions, a dtype the writer does not lay out), the answer is None and the
streaming executor keeps mergekit's own writer.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mergekit_reasoning.core.formats import FLOAT_NAMES, stored_tensors, torch_dtype
from mergekit_reasoning.executor.mergekit_private import resolve_tensor_name
from mergekit_reasoning.executor.shard_writer import Entry, supports

STORED = {name: torch_dtype(name) for name in FLOAT_NAMES}


def output_entries(tasks: Sequence) -> Optional[List[Entry]]:
    """The outputs of mergekit's SaveTensor `tasks`, in order, or None where unknown."""
    from mergekit.common import dtype_from_name

    headers: Dict[str, Dict[str, Tuple[str, Tuple[int, ...]]]] = {}
    entries = []
    for task in tasks:
        merge = task.tensor_task
        loaded = {}
        for load in merge.gather_tensors.arguments().values():
            read = stored_read(load)
            if read is None:
                return None
            path, name = read
            stored = _header(path, headers).get(name)
            if stored is None or stored[0] not in STORED:
                return None
            dtype = dtype_from_name(load.dtype) if load.dtype else STORED[stored[0]]
            loaded[load.model] = (dtype, stored[1])
        if merge.base_model not in loaded or any(m not in loaded for m in merge.model_order):
            return None
        dtype = loaded[merge.base_model][0]
        for model in merge.model_order:
            dtype = torch.promote_types(dtype, loaded[model][0])
        entries.append(Entry(task.tensor_name, dtype_from_name(task.dtype) or dtype, loaded[merge.base_model][1]))
    return entries if supports(entries) else None


def stored_read(load) -> Optional[Tuple[str, str]]:
    """(file, stored tensor) that mergekit's LoadTensor `load` reads, or None where it would
    convert or miss the tensor."""
    from mergekit.io.tasks import LoaderCache

    loader = LoaderCache().get(load.model)
    name = resolve_tensor_name(load, loader)
    if name is None or name not in loader.index.tensor_paths:
        return None
    return os.path.join(loader.index.base_path, loader.index.tensor_paths[name]), name


def _header(path: str, cache: Dict) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """name -> (dtype, shape) of a safetensors file, read once; {} for other files."""
    if path not in cache:
        cache[path] = stored_tensors(path) if path.endswith(".safetensors") else {}
    return cache[path]
