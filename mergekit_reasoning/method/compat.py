"""Compatibility of a target with its donors, checked from headers before any merge.

Everything here reads configs and safetensors headers only, so a 15 GB model is
checked in milliseconds and a mismatch is reported before a byte is written.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
VOCAB_AXIS = {EMBED: 0, HEAD: 0}


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
    """Shapes from the safetensors headers of a model's shards (pickles: none)."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    dtypes: Dict[str, str] = {}
    for file in sorted(set(tensor_files.values())):
        refuse_outside(label, file)
        if not file.endswith(".safetensors"):
            continue
        try:
            stored = stored_tensors(os.path.join(base_path, file))
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


def check_compatible(target: ModelInfo, donors: Sequence[ModelInfo], *, what: str = "the target") -> Compatibility:
    """Raise RecipeError naming the model and tensor at the first real mismatch."""
    result = Compatibility()
    for donor in donors:
        _check_structure(target, donor, what)
        _check_tensors(target, donor, what)
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


def _check_structure(target: ModelInfo, donor: ModelInfo, what: str) -> None:
    t_arch, d_arch = target.config.get("architectures"), donor.config.get("architectures")
    if t_arch and d_arch and list(t_arch) != list(d_arch):
        raise RecipeError(f"model {donor.label}: architecture {d_arch[0]} differs from {what}'s {t_arch[0]}")
    for key in STRUCTURE_KEYS:
        if target.config.get(key) != donor.config.get(key):
            raise RecipeError(
                f"model {donor.label}: {key} is {donor.config.get(key)}, "
                f"but {what} {target.label} has {target.config.get(key)}"
            )


def _check_tensors(target: ModelInfo, donor: ModelInfo, what: str) -> None:
    for name, shape in target.shapes.items():
        refuse_non_float(target, name)
        source = source_tensor(donor, name)
        if source is None or source not in donor.shapes:
            raise RecipeError(f"model {donor.label}: tensor {name} is missing ({what} has it)")
        refuse_non_float(donor, name)
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
