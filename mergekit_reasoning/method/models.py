"""Models named by a recipe, opened the way mergekit opens them (hub or local)."""

from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

from mergekit.common import ModelReference
from mergekit.io.tasks import LoaderCache

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import broken_shard
from mergekit_reasoning.method.compat import ModelInfo, read_model_info
from mergekit_reasoning.method.vector_format import (
    check_against_shards,
    check_roles_and_dtypes,
    read_manifest,
    sparse_message,
)


def loader(ref: ModelReference):
    """mergekit's lazy loader for `ref`: a hub download when it is not a local folder."""
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
    return info


@lru_cache(maxsize=None)
def vector_manifest(ref: ModelReference):
    """The vector manifest of `ref`, or None when it is an ordinary model."""
    return read_manifest(loader(ref).index.base_path)


def check_roles(roles, load_dtype=None) -> None:
    """A `vector` donor must be a vector folder, and a vector folder must be one."""
    check_roles_and_dtypes(
        [(ref, role) for ref, role in roles], {ref: vector_manifest(ref) for ref, _ in roles}, load_dtype
    )
