"""Compatibility of a target with its donors, checked from headers before any merge.

Everything here reads configs and tensor headers only (safetensors headers, and
for pickled `.bin` weights the pickle's tensor records, whose storages are never
read), so a 15 GB model is checked in milliseconds, in any mix of formats, and a
mismatch is reported before a byte is written.

Which layers meet depends on the recipe: `models:` merges every layer with the
same layer of every other model (equal depths); `slices:` says which layer
ranges meet, so a donor may be deeper than the target (`slice_layers`);
`mergekit-pytorch` merges single files tensor by tensor, by name, with no config
(`check_raw_compatible`).
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import FLOAT_NAMES, refuse_outside, stored_tensors

# Config fields that must agree for the same tensor name to mean the same thing.
STRUCTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
DEPTH = "num_hidden_layers"
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
VOCAB_AXIS = {EMBED: 0, HEAD: 0}
# `layers` of check_compatible: compare the layers target and donor both have, by index
# (when the recipe's layer ranges are not known), instead of requiring equal depths.
COMMON = "common"
LayerMaps = Union[None, str, Mapping[str, Mapping[int, int]]]


@dataclass(frozen=True)
class ModelInfo:
    """What the checks need to know about one model, read without loading it."""

    label: str
    config: Mapping
    shapes: Mapping[str, Tuple[int, ...]]
    dtypes: Mapping[str, str] = field(default_factory=dict)  # safetensors dtype names, where headers tell

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False)) and HEAD not in self.shapes

    def head_source(self) -> Optional[str]:
        """The stored tensor that acts as this model's output head."""
        if HEAD in self.shapes:
            return HEAD
        return EMBED if self.config.get("tie_word_embeddings", False) else None


@dataclass
class Compatibility:
    """What the merge must do beyond plain elementwise arithmetic."""

    # tensor -> (target rows, rows every model shares) where row counts differ
    vocab_rows: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    # donors whose stored lm_head is dropped because the target ties its head
    dropped_heads: List[str] = field(default_factory=list)

    def notes(self) -> List[str]:
        out = [
            f"{name}: vocabulary rows differ; the vector applies to the {shared} shared rows, "
            f"the target keeps its other {rows - shared}"
            for name, (rows, shared) in self.vocab_rows.items()
        ]
        if self.dropped_heads:
            out.append(
                "the target ties lm_head to its embeddings, so the output stays tied and the "
                f"lm_head part of the vector from {', '.join(self.dropped_heads)} is dropped"
            )
        return out


def read_model_info(label: str, base_path: str, tensor_files: Mapping[str, str], config: Mapping) -> ModelInfo:
    """Shapes and dtypes of a model's tensors from its shards' headers, whatever their format."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    dtypes: Dict[str, str] = {}
    for file in sorted(set(tensor_files.values())):
        refuse_outside(label, file)
        try:
            stored = stored_headers(os.path.join(base_path, file))
        except Exception as error:
            raise RecipeError(f"model {label}: cannot read {file}: {error}") from None
        for name, (dtype, shape) in stored.items():
            if tensor_files.get(name) == file:
                shapes[name], dtypes[name] = shape, dtype
    return ModelInfo(label=label, config=dict(config), shapes=shapes, dtypes=dtypes)


def refuse_non_float(info: ModelInfo, name: str) -> None:
    """Only float tensors are merged: an integer or boolean one would be added as if it
    were a float (and a load `dtype` would even convert it first, silently)."""
    source = source_tensor(info, name) or name
    dtype = info.dtypes.get(source)
    if dtype is not None and dtype not in FLOAT_NAMES:
        raise RecipeError(
            f"model {info.label}: tensor {source} is stored as {dtype}; only float tensors "
            f"({', '.join(FLOAT_NAMES)}) are merged"
        )


# torch dtypes of pickled tensors under their safetensors names, as the checks compare them
PICKLED_NAMES = {
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def stored_headers(path: str) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """name -> (safetensors dtype name, shape) of one weights file, without reading a weight:
    a safetensors header, or a pickle's tensor records loaded onto torch's `meta` device,
    which allocates and reads no storage (as mergekit indexes a single pickled file),
    safely (`weights_only`)."""
    if path.endswith(".safetensors"):
        return stored_tensors(path)
    import torch

    state = torch.load(path, map_location="meta", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:  # as mergekit reads such files
        state = state["state_dict"]
    return {
        name: (PICKLED_NAMES.get(str(value.dtype).removeprefix("torch."), str(value.dtype)), tuple(value.shape))
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def stored_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """name -> shape of one weights file, safetensors or pickled, without reading a weight."""
    return {name: shape for name, (_, shape) in stored_headers(path).items()}


def check_compatible(
    target: ModelInfo, donors: Sequence[ModelInfo], *, what: str = "the target", layers: LayerMaps = None
) -> Compatibility:
    """Raise RecipeError naming the model and tensor at the first real mismatch.

    `layers` says which layers meet: None (a `models:` recipe) requires equal
    depths and every tensor of the target in every donor; a mapping gives, per
    donor label, {target layer: donor layer} from a recipe's slices (`slice_layers`),
    and only those layers are compared; `COMMON` compares the layers both have.
    """
    result = Compatibility()
    for donor in donors:
        donor_layers = layers if layers is None or layers == COMMON else layers.get(donor.label, {})
        _check_structure(target, donor, what, depth=layers is None)
        _check_tensors(target, donor, what, donor_layers)
    _check_head(target, donors, result)
    for name in VOCAB_AXIS:
        if name in target.shapes:
            rows = [target.shapes[name][0]] + [
                d.shapes[src][0] for d in donors if (src := source_tensor(d, name)) in d.shapes
            ]
            if len(set(rows)) > 1 and not (name == HEAD and target.tied):
                result.vocab_rows[name] = (rows[0], min(rows))
    return result


def source_tensor(model: ModelInfo, name: str) -> Optional[str]:
    """The stored tensor that plays `name` in `model`: its embeddings stand in for a tied head."""
    return model.head_source() if name == HEAD else name


def check_raw_compatible(target: ModelInfo, donors: Sequence[ModelInfo]) -> None:
    """Single weight files (`mergekit-pytorch`): no config, every tensor merged by name, so
    every tensor two files share must have one shape. Which tensors all files must hold is
    mergekit-pytorch's call (`--tensor-union`, `--tensor-intersection`)."""
    for donor in donors:
        for name, shape in target.shapes.items():
            got = donor.shapes.get(name)
            if got is not None and got != shape:
                raise RecipeError(
                    f"model {donor.label}: tensor {name} has shape {list(got)}, but the target's has {list(shape)}"
                )


def slice_layers(
    target: str, sources: Sequence[Tuple[str, Tuple[int, int]]], depths: Mapping[str, Optional[int]]
) -> Dict[str, Dict[int, int]]:
    """{donor: {target layer: donor layer}} for one output slice's (model, layer_range) sources,
    which must span as many layers as the target's range does (as mergekit requires)."""
    ranges = [layer_range for model, layer_range in sources if model == target]
    if not ranges:
        return {}  # mergekit refuses a slice without its base input itself
    start, stop = ranges[0]
    maps: Dict[str, Dict[int, int]] = {}
    for model, (first, last) in sources:
        if model == target:
            continue
        if last - first != stop - start:
            if (first, last) == (0, depths.get(model)) and (start, stop) == (0, depths.get(target)):
                raise RecipeError(f"model {model}: {DEPTH} is {last}, but the target {target} has {stop}")
            raise RecipeError(
                f"model {model}: layer_range [{first}, {last}] spans {last - first} layers, but the target's "
                f"[{start}, {stop}] in the same slice spans {stop - start}"
            )
        maps.setdefault(model, {}).update({start + i: first + i for i in range(stop - start)})
    return maps


def layer_of(name: str) -> Optional[Tuple[int, str, str]]:
    """(layer, prefix, rest) of a per-layer tensor name (its first all-digit component), else None."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[:index]), ".".join(parts[index + 1 :])
    return None


def _check_structure(target: ModelInfo, donor: ModelInfo, what: str, *, depth: bool = True) -> None:
    t_arch, d_arch = target.config.get("architectures"), donor.config.get("architectures")
    if t_arch and d_arch and list(t_arch) != list(d_arch):
        raise RecipeError(
            f"model {donor.label}: architecture {d_arch[0]} differs from {what}'s {t_arch[0]}; reasoning_vector "
            "merges models of one architecture only, with or without --allow-crimes"
        )
    for key in STRUCTURE_KEYS:
        if key == DEPTH and not depth:
            continue
        if target.config.get(key) != donor.config.get(key):
            raise RecipeError(
                f"model {donor.label}: {key} is {donor.config.get(key)}, "
                f"but {what} {target.label} has {target.config.get(key)}"
            )


def _check_tensors(target: ModelInfo, donor: ModelInfo, what: str, layers: LayerMaps) -> None:
    for name, shape in target.shapes.items():
        refuse_non_float(target, name)
        source = source_tensor(donor, name)
        layer = layer_of(name) if layers is not None else None
        if layer is not None:
            index, prefix, rest = layer
            if layers == COMMON:
                if source not in donor.shapes:
                    continue  # a layer the donor does not have: the recipe's slices decide
            elif index not in layers:
                continue  # not merged with this donor
            else:
                source = ".".join(filter(None, (prefix, str(layers[index]), rest)))
        if source is None or source not in donor.shapes:
            raise RecipeError(f"model {donor.label}: tensor {source or name} is missing ({what} has {name})")
        refuse_non_float(donor, source)
        got = donor.shapes[source]
        if got == shape:
            continue
        axis = VOCAB_AXIS.get(name)
        if axis is not None and len(got) == len(shape) and got[1:] == shape[1:]:
            continue  # vocabulary rows: recorded by check_compatible
        raise RecipeError(
            f"model {donor.label}: tensor {source} has shape {list(got)}, but {what}'s {name} has {list(shape)}"
        )


def _check_head(target: ModelInfo, donors: Sequence[ModelInfo], result: Compatibility) -> None:
    if HEAD in target.shapes:
        return  # untied target: donors give their stored head, or their embeddings if tied
    if not target.config.get("tie_word_embeddings", False):
        raise RecipeError(f"model {target.label}: no {HEAD} stored and tie_word_embeddings is false")
    result.dropped_heads.extend(d.label for d in donors if HEAD in d.shapes)
