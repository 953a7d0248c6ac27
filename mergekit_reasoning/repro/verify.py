"""Checking a folder against its manifest: a merge's or a vector's."""

import tempfile
from pathlib import Path
from typing import List, Optional

from mergekit.io.lazy_tensor_loader import ShardedTensorIndex

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.executor import manifest as merges
from mergekit_reasoning.executor import run
from mergekit_reasoning.executor.recipe import Recipe
from mergekit_reasoning.method import vector_format as vectors
from mergekit_reasoning.method.compat import read_model_info


def verify_folder(
    folder: Path,
    *,
    check_inputs: bool = False,
    remerge: bool = False,
    rehash: bool = False,
    notes: Optional[List[str]] = None,
) -> List[str]:
    """Every problem found, one line each; an empty list means the folder is as recorded.

    `notes` receives what a reader should know about how it was checked (hashes taken
    from the cache instead of read); `rehash` reads every input file instead."""
    folder = Path(folder)
    vector = vectors.read_manifest(folder)
    if vector is not None:
        return _vector_problems(folder, vector)
    recorded = merges.read_manifest(folder)
    problems = merges.output_problems(folder, recorded)
    if check_inputs:
        found, from_cache = merges.input_problems(recorded, rehash=rehash)
        problems += found
        if from_cache and notes is not None:
            notes.append(
                f"{from_cache} input file hashes came from the hash cache (unchanged path, size, modification time "
                "and inode, or a hub blob's own name), not a read: pass --rehash to read them"
            )
    if remerge:
        problems += _remerge_problems(folder, recorded)
    return problems


def _vector_problems(folder: Path, manifest) -> List[str]:
    problems = merges.shard_problems(folder, manifest["shards"])
    if not problems:
        try:
            index = ShardedTensorIndex.from_disk(str(folder))
            info = read_model_info(str(folder), str(folder), index.tensor_paths, {})
            vectors.check_against_shards(str(folder), manifest, info)
        except RecipeError as error:
            problems.append(str(error))
    return problems


def _remerge_problems(folder: Path, recorded) -> List[str]:
    """Merge again from the recorded recipe and compare shard hashes."""
    recipe = Recipe.from_text(recorded["recipe"], source=f"{folder} (recorded recipe)")
    settings = run.MergeSettings(out_shard_size=str(recorded.get("out_shard_size", "5B")))
    lam = recorded.get("lambda_override")
    with tempfile.TemporaryDirectory(prefix="remerge-", dir=folder.parent) as scratch:
        again = Path(scratch) / folder.name
        run.merge(recipe, [again], settings, lambdas=None if lam is None else [lam])
        fresh = merges.read_manifest(again)["outputs"]
    return [
        f"shard {name}: a fresh merge of the recorded recipe gives different bytes"
        for name in sorted(set(fresh) | set(recorded["outputs"]))
        if fresh.get(name) != recorded["outputs"].get(name)
    ]
