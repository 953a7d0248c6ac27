"""Models named by a recipe, opened the way mergekit opens them (hub or local)."""

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

from mergekit.common import ModelReference
from mergekit.io.tasks import LoaderCache

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import broken_shard
from mergekit_reasoning.method.compat import ModelInfo, read_model_info, refuse_non_float
from mergekit_reasoning.method.vector_format import (
    check_against_shards,
    check_roles_and_dtypes,
    check_shard_hashes,
    read_manifest,
    sparse_message,
)

MAX_LAYERS = 4096  # a config claiming more is not a model this package can plan


def loader(ref: ModelReference):
    """mergekit's lazy loader for `ref`: a hub download when it is not a local folder."""
    refuse_missing_folder(ref)
    try:
        return LoaderCache().get(ref)
    except Exception as error:
        problem = broken_shard(ref.model.path)  # name the broken shard of a local folder
        raise RecipeError(f"model {ref}: cannot open its weights: {problem or error}") from None


def local_folder(ref: ModelReference) -> Tuple[Path, Optional[str]]:
    """The folder mergekit reads `ref` from, and its revision: the one pinned in the
    recipe, or the snapshot the Hugging Face cache resolved it to."""
    folder = Path(loader(ref).index.base_path)
    return folder, ref.model.revision or (folder.name if folder.parent.name == "snapshots" else None)


@lru_cache(maxsize=None)
def model_info(ref: ModelReference) -> ModelInfo:
    refuse_missing_folder(ref)
    _refuse_absurd_config(ref)
    try:
        config = ref.config(trust_remote_code=LoaderCache().trust_remote_code).to_dict()
    except Exception as error:
        raise RecipeError(f"model {ref}: cannot read its config: {error}") from None
    index = loader(ref).index
    info = read_model_info(str(ref), index.base_path, index.tensor_paths, config)
    manifest = read_manifest(index.base_path)
    if manifest is not None:
        if manifest.get("storage") == "sparse":
            raise RecipeError(sparse_message(ref))
        check_against_shards(str(ref), manifest, info)
        check_shard_hashes(index.base_path, manifest)
    return info


def refuse_missing_folder(ref: ModelReference) -> None:
    """A reference written as a folder that does not exist is that, not a bad hub id."""
    path = ref.model.path
    if _written_as_a_folder(path) and not os.path.exists(os.path.expanduser(path)):
        raise RecipeError(f"model {ref}: no such folder")


def _refuse_absurd_config(ref: ModelReference) -> None:
    """Read a local config's layer count before transformers does: it builds per-layer
    lists, so a config claiming 10^8 layers would take minutes and gigabytes."""
    path = os.path.join(os.path.expanduser(ref.model.path), "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            layers = json.load(handle).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return  # not local, or unreadable: reported where transformers reads it
    if isinstance(layers, int) and not isinstance(layers, bool) and not 0 < layers <= MAX_LAYERS:
        raise RecipeError(f"model {ref}: its config claims {layers} layers (at most {MAX_LAYERS} are believed)")


def _written_as_a_folder(path: str) -> bool:
    """A reference no hub id looks like: absolute, relative with ./ or ~, or several levels deep."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


@lru_cache(maxsize=None)
def vector_manifest(ref: ModelReference):
    """The vector manifest of `ref`, or None when it is an ordinary model."""
    return read_manifest(loader(ref).index.base_path)


def check_roles(roles, load_dtype=None) -> None:
    """A `vector` donor must be a vector folder, and a vector folder must be one."""
    check_roles_and_dtypes(
        [(ref, role) for ref, role in roles], {ref: vector_manifest(ref) for ref, _ in roles}, load_dtype
    )


def refuse_non_float_inputs(name: str, refs) -> None:
    """Every model's stored `name` must be a float tensor (read from its header)."""
    for ref in refs:
        refuse_non_float(model_info(ref), name)
