"""A vector folder's manifest, read and checked against its shards.

Kept apart from `vectors` (which extracts and densifies) so that opening a model
(`inputs`) can tell a vector folder from a model, and check it, without importing
the code that writes vectors: the modules depend one way, not in a circle.
"""

import json
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import VECTOR_DTYPES
from mergekit_reasoning.core.hashing import cached_sha256

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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RecipeError(f"vector {folder}: {MANIFEST} is not a mergekit-reasoning vector manifest")
    _check_fields(folder, manifest)
    return manifest


def _check_fields(folder: Path, manifest: Dict) -> None:
    """A manifest the code can rely on: each field present and of its kind."""

    def bad(field: str) -> RecipeError:
        return RecipeError(f"vector {folder}: {MANIFEST} has no valid `{field}`")

    if manifest.get("dtype") not in DTYPES:
        raise bad("dtype")
    if manifest.get("storage", "dense") not in ("dense", "sparse"):
        raise bad("storage")
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("shape"), list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])
        for entry in tensors.values()
    ):
        raise bad("tensors")
    shards = manifest.get("shards")
    if not isinstance(shards, dict) or not all(
        isinstance(name, str) and "/" not in name and name not in ("", ".", "..") and _is_sha256(digest)
        for name, digest in shards.items()
    ):
        raise bad("shards")


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def check_shard_hashes(folder: Path, manifest: Dict, hasher: Callable[[Path], str] = cached_sha256) -> None:
    """The shards beside the manifest must be the ones it recorded, byte for byte: a vector
    whose shards changed after extraction is refused, naming the shard."""
    folder = Path(folder)
    present = {p.name for p in folder.glob("*.safetensors")}
    recorded = manifest["shards"]
    for name in sorted(set(recorded) - present):
        raise RecipeError(f"vector {folder}: shard {name} is missing")
    for name in sorted(present - set(recorded)):
        raise RecipeError(f"vector {folder}: shard {name} is not in its manifest")
    for name in sorted(recorded):
        if hasher(folder / name) != recorded[name]:
            raise RecipeError(f"vector {folder}: shard {name} differs from its manifest (changed after extraction)")


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
