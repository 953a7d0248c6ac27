"""Models named by a recipe, opened the way mergekit opens them (hub or local).

A reference is a model folder (local, or a hub ID mergekit downloads), a single
weights file (`mergekit-pytorch`), or a model with a LoRA adapter (`model+lora`).
What the checks read of it is cached under the identity of its files (path,
size, modification time and inode of each), so a model changed on disk between
two merges in one process is read and checked again.
"""

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

from mergekit.common import ModelReference
from mergekit.io.lazy_tensor_loader import ShardedTensorIndex
from mergekit.io.tasks import LoaderCache

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import broken_shard
from mergekit_reasoning.core.hashing import Identity, path_identity
from mergekit_reasoning.method.compat import ModelInfo, read_model_info, refuse_non_float
from mergekit_reasoning.method.vector_format import (
    check_against_shards,
    check_roles_and_dtypes,
    check_shard_hashes,
    read_manifest,
    sparse_message,
)

MAX_LAYERS = 4096  # a config claiming more is not a model this package can plan
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def loader(ref: ModelReference):
    """mergekit's lazy loader for `ref`: a hub download when it is not a local folder."""
    refuse_missing_folder(ref)
    try:
        return LoaderCache().get(ref)
    except Exception as error:
        if ref.lora and not LoaderCache().lora_cache_dir:
            raise RecipeError(
                f"model {ref}: a LoRA donor is merged into its model first, which needs a folder for the "
                "result: mergekit-yaml takes --lora-merge-cache DIR, mergekit-reasoning merge uses its cache folder"
            ) from None
        problem = broken_shard(ref.model.path)  # name the broken shard of a local folder
        raise RecipeError(f"model {ref}: cannot open its weights: {problem or error}") from None


def local_folder(ref: ModelReference) -> Tuple[Path, Optional[str]]:
    """The folder mergekit reads `ref` from, and its revision: the one pinned in the
    recipe, or the snapshot the Hugging Face cache resolved it to."""
    folder = Path(loader(ref).index.base_path)
    return folder, ref.model.revision or (folder.name if folder.parent.name == "snapshots" else None)


def single_file(ref: ModelReference) -> Optional[Path]:
    """The weights file `ref` names, for `mergekit-pytorch`'s single-file references, else None."""
    path = Path(ref.model.path)
    if ref.lora is None and path.suffix in WEIGHT_SUFFIXES and path.is_file():
        return path
    return None


def _without_lora(ref: ModelReference) -> ModelReference:
    return ModelReference(model=ref.model, override_architecture=ref.override_architecture)


def _reads_base(ref: ModelReference) -> bool:
    """A LoRA donor outside a merge (`check`): its adapter changes values, not shapes or
    names, so the model it applies to stands in for it until a merge merges it."""
    return ref.lora is not None and not LoaderCache().lora_cache_dir


def model_identity(ref: ModelReference) -> Identity:
    """The identity of every file `ref` is read from: what the caches below are keyed on."""
    file = single_file(ref)
    if file is not None:
        return path_identity(file)
    if _reads_base(ref):
        adapter = Path(ref.lora.path)
        return model_identity(_without_lora(ref)) + (path_identity(adapter) if adapter.exists() else (str(adapter),))
    return path_identity(Path(loader(ref).index.base_path))


def model_info(ref: ModelReference) -> ModelInfo:
    """Config and tensor shapes of `ref`, read without loading a weight."""
    return _model_info(ref, model_identity(ref))


@lru_cache(maxsize=256)
def _model_info(ref: ModelReference, identity: Identity) -> ModelInfo:
    file = single_file(ref)
    if file is not None:  # no config: mergekit-pytorch merges by tensor name
        index = ShardedTensorIndex.from_file(str(file))
        return read_model_info(str(ref), index.base_path, index.tensor_paths, {})
    if _reads_base(ref):
        info = model_info(_without_lora(ref))
        adapter = Path(ref.lora.path)
        if adapter.is_dir() and not (adapter / "adapter_config.json").is_file():
            raise RecipeError(f"model {ref}: {adapter} holds no adapter_config.json, so it is not a LoRA adapter")
        return ModelInfo(label=str(ref), config=info.config, shapes=info.shapes, dtypes=info.dtypes)
    refuse_missing_folder(ref)
    _refuse_absurd_config(ref)
    try:
        config = ref.config(trust_remote_code=LoaderCache().trust_remote_code).to_dict()
    except Exception as error:
        raise RecipeError(f"model {ref}: cannot read its config: {error}") from None
    folder = loader(ref).index.base_path
    try:
        index = ShardedTensorIndex.from_disk(folder)  # afresh: mergekit's loader keeps its first index
    except Exception as error:
        raise RecipeError(f"model {ref}: cannot open its weights: {error}") from None
    info = read_model_info(str(ref), folder, index.tensor_paths, config)
    manifest = read_manifest(folder)
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


def vector_manifest(ref: ModelReference):
    """The vector manifest of `ref`, or None when it is an ordinary model."""
    if single_file(ref) is not None or _reads_base(ref):
        return None  # a vector is a folder
    return _vector_manifest(ref, model_identity(ref))


@lru_cache(maxsize=256)
def _vector_manifest(ref: ModelReference, identity: Identity):
    return read_manifest(loader(ref).index.base_path)


def check_roles(roles, load_dtype=None) -> None:
    """Every model has a role; a `vector` donor must be a vector folder, and a vector folder must be one."""
    roles = list(roles)
    for ref, role in roles:
        if role is None:
            raise RecipeError(f"model {ref} has no role: give it `role: grpo` or `role: sft`")
    check_roles_and_dtypes(
        [(ref, role) for ref, role in roles], {ref: vector_manifest(ref) for ref, _ in roles}, load_dtype
    )


def refuse_non_float_inputs(name: str, refs) -> None:
    """Every model's stored `name` must be a float tensor (read from its header)."""
    for ref in refs:
        refuse_non_float(model_info(ref), name)
