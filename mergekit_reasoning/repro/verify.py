"""Checking a folder against its manifest: a merge's or a vector's."""

import tempfile
from pathlib import Path
from typing import Callable, List

from mergekit_reasoning.errors import RecipeError


def verify_folder(folder: Path, *, check_inputs: bool = False, remerge: bool = False, options_factory: Callable = None) -> List[str]:
    """Every problem found, one line each; an empty list means the folder is as recorded."""
    from mergekit_reasoning.repro import manifest as merges
    from mergekit_reasoning.vectors import manifest as vectors
    folder = Path(folder)
    vector = vectors.read_manifest(folder)
    if vector is not None:
        return _vector_problems(folder, vector)
    recorded = merges.read_manifest(folder)
    problems = merges.output_problems(folder, recorded)
    if check_inputs:
        problems += merges.input_problems(recorded)
    if remerge:
        size = str(recorded.get("out_shard_size", "5B"))
        problems += _remerge_problems(folder, recorded, options_factory(out_shard_size=size, quiet=True))
    return problems


def _vector_problems(folder: Path, manifest) -> List[str]:
    from mergekit_reasoning.merge.compat import read_model_info
    from mergekit_reasoning.repro.manifest import shard_problems
    from mergekit_reasoning.vectors.manifest import check_against_shards

    problems = shard_problems(folder, manifest["shards"])
    if not problems:
        try:
            from mergekit.io.lazy_tensor_loader import ShardedTensorIndex

            index = ShardedTensorIndex.from_disk(str(folder))
            check_against_shards(str(folder), manifest, read_model_info(str(folder), str(folder), index.tensor_paths, {}))
        except RecipeError as error:
            problems.append(error.message)
    return problems


def _remerge_problems(folder: Path, recorded, options) -> List[str]:
    """Merge again from the recorded recipe and compare shard hashes."""
    import yaml

    from mergekit_reasoning.merge import stream
    from mergekit_reasoning.repro.manifest import read_manifest
    from mergekit_reasoning.merge.recipe import check_recipe, parse_recipe

    checked = check_recipe(recorded["recipe"], parse_recipe(yaml.safe_load(recorded["recipe"]), source=f"{folder} (recorded recipe)"))
    lam = recorded.get("lambda_override")
    with tempfile.TemporaryDirectory(prefix="remerge-", dir=folder.parent) as scratch:
        again = Path(scratch) / folder.name
        stream.merge(checked, [again], options, lambdas=None if lam is None else [lam])
        fresh = read_manifest(again)["outputs"]
    return [
        f"shard {name}: a fresh merge of the recorded recipe gives different bytes"
        for name in sorted(set(fresh) | set(recorded["outputs"]))
        if fresh.get(name) != recorded["outputs"].get(name)
    ]
