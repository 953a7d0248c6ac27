"""Models named by a recipe, opened the way mergekit opens them (hub or local)."""

from functools import lru_cache

from mergekit.common import ModelReference
from mergekit.io.tasks import LoaderCache

from mergekit_reasoning.compat import ModelInfo, read_model_info
from mergekit_reasoning.errors import RecipeError
from mergekit_reasoning.vectors import check_against_shards, read_manifest


def loader(ref: ModelReference):
    """mergekit's lazy loader for `ref`: a hub download when it is not a local folder."""
    try:
        return LoaderCache().get(ref)
    except Exception as error:
        raise RecipeError(f"model {ref}: cannot open its weights: {_culprit(ref) or error}") from None


def _culprit(ref: ModelReference) -> str:
    """Name the shard that fails to open, when the model is a local folder."""
    from pathlib import Path

    from safetensors import safe_open

    for shard in sorted(Path(ref.model.path).glob("*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt"):
                pass
        except Exception as error:
            return f"{shard.name} is truncated or corrupt ({error})"
    return ""


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
        check_against_shards(str(ref), manifest, info)
    return info


@lru_cache(maxsize=None)
def vector_manifest(ref: ModelReference):
    """The vector manifest of `ref`, or None when it is an ordinary model."""
    return read_manifest(loader(ref).index.base_path)


def check_roles(roles) -> None:
    """A `vector` donor must be a vector folder, and a vector folder must be one."""
    for ref, role in roles:
        is_vector = vector_manifest(ref) is not None
        if role == "vector" and not is_vector:
            raise RecipeError(f"model {ref} has role vector but is not a vector folder (no reasoning_vector.json)")
        if role != "vector" and is_vector:
            raise RecipeError(f"model {ref} is a vector folder: give it `role: vector`, not {role!r}")
