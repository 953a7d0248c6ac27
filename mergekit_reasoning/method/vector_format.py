"""A vector folder's manifest, read and checked against its shards.

Kept apart from `vectors` (which extracts and densifies) so that opening a model
(`inputs`) can tell a vector folder from a model, and check it, without importing
the code that writes vectors: the modules depend one way, not in a circle.
"""

import json
from pathlib import Path
from typing import Dict, Optional

import torch

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import VECTOR_DTYPES

MANIFEST = "reasoning_vector.json"
FORMAT = "mergekit-reasoning/vector"
DTYPES = {name: getattr(torch, name) for name in VECTOR_DTYPES}
INDICES, VALUES = ".nonzero_indices", ".nonzero_values"  # the two tensors a sparse entry is stored as


def read_manifest(folder: Path) -> Optional[Dict]:
    """The folder's vector manifest, or None for an ordinary model folder."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RecipeError(f"vector {folder}: {MANIFEST} is not valid JSON: {error}") from None
    if manifest.get("format") != FORMAT:
        raise RecipeError(f"vector {folder}: {MANIFEST} is not a mergekit-reasoning vector manifest")
    return manifest


def check_roles_and_dtypes(roles, manifests, load_dtype: Optional[str]) -> None:
    """`role: vector` exactly for vector folders, and no narrowing of a stored vector on load.

    `roles` holds (model, role) pairs and `manifests` each model's vector manifest
    or None. Loading a float32 vector as bfloat16 would round it before the
    arithmetic, so a narrower `dtype` is refused.
    """
    for model, role in roles:
        manifest = manifests.get(model)
        if role == "vector" and manifest is None:
            raise RecipeError(f"model {model} has role vector but is not a vector folder (no {MANIFEST})")
        if manifest is not None and manifest.get("storage") == "sparse":
            raise RecipeError(sparse_message(model))
        if role != "vector" and manifest is not None:
            raise RecipeError(f"model {model} is a vector folder: give it `role: vector`, not {role!r}")
        if manifest is not None and load_dtype is not None:
            stored, load = DTYPES.get(manifest["dtype"]), getattr(torch, str(load_dtype).removeprefix("torch."), None)
            if stored is not None and load is not None and torch.finfo(load).bits < torch.finfo(stored).bits:
                raise RecipeError(
                    f"vector {model} is stored in {manifest['dtype']} but the recipe loads inputs as "
                    f"{load_dtype}; remove `dtype` (keep `out_dtype`) so the vector is used as stored"
                )


def sparse_message(model) -> str:
    return f"vector {model} is stored sparse, for sharing: run `mergekit-reasoning densify {model} DIR` and apply DIR"


def check_against_shards(label: str, manifest: Dict, info) -> None:
    """The manifest must describe the shards beside it: same tensors, shapes, dtypes."""
    listed, stored = manifest["tensors"], info.shapes
    if manifest.get("storage") == "sparse":
        for name in listed:
            indices, values = stored.get(name + INDICES), stored.get(name + VALUES)
            if indices is None or values is None or indices != values:
                raise RecipeError(f"vector {label}: the sparse entries of {name} are missing or do not match")
        return
    for name in sorted(set(listed) | set(stored)):
        if name not in stored:
            raise RecipeError(f"vector {label}: manifest lists {name}, which no shard holds")
        if name not in listed:
            raise RecipeError(f"vector {label}: shards hold {name}, which the manifest does not list")
        if list(stored[name]) != list(listed[name]["shape"]):
            raise RecipeError(
                f"vector {label}: {name} has shape {list(stored[name])} in its shard, "
                f"but the manifest says {listed[name]['shape']}"
            )
