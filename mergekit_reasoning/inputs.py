"""Models named by a recipe, opened the way mergekit opens them (hub or local)."""

from functools import lru_cache

from mergekit.common import ModelReference
from mergekit.io.tasks import LoaderCache

from mergekit_reasoning.compat import ModelInfo, read_model_info
from mergekit_reasoning.errors import RecipeError


def loader(ref: ModelReference):
    """mergekit's lazy loader for `ref`: a hub download when it is not a local folder."""
    try:
        return LoaderCache().get(ref)
    except Exception as error:
        raise RecipeError(f"model {ref}: cannot open its weights: {error}") from None


@lru_cache(maxsize=None)
def model_info(ref: ModelReference) -> ModelInfo:
    try:
        config = ref.config(trust_remote_code=LoaderCache().trust_remote_code).to_dict()
    except Exception as error:
        raise RecipeError(f"model {ref}: cannot read its config: {error}") from None
    index = loader(ref).index
    return read_model_info(str(ref), index.base_path, index.tensor_paths, config)
