"""The project's own executor: one pass over the tensors, read → merge → write.

mergekit plans the merge (tensor names, aliases, tied names, filters, gradients),
so both executors resolve exactly the same inputs and parameters; this one then
streams the plan tensor by tensor through mergekit's lazy loader, prefetching
the next tensor while the current one is merged. When every output's header is
known up front (safetensors inputs, the usual case) the output shards are laid
out first and the kernel writes into them in place, hashed as they fill
(`shard_writer.py`); otherwise mergekit's shard writer collects them. It also
carries the policies mergekit's executor cannot express: vocabularies of
different lengths and a tied target with untied donors. Given several λ values it
reads the inputs once and writes one model per λ. Output goes to a temporary
folder that is renamed into place only when complete, with a manifest
(`reasoning_merge.json`) of its inputs and shards. Recipes that align
tokenizers (`tokenizer:`) are not streamed: mergekit's executor merges them,
with a note, into the same staging folder and manifest.
"""

import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.hashing import input_digest, known_without_reading, model_files, remember_digest
from mergekit_reasoning.core.staging import staged
from mergekit_reasoning.executor.input_hashes import InputHashes
from mergekit_reasoning.executor.input_sizes import InputSizes
from mergekit_reasoning.executor.layout import output_entries, stored_read
from mergekit_reasoning.executor.manifest import describe_inputs, input_roles, write_manifest
from mergekit_reasoning.executor.mergekit_private import (
    copy_tagalong_files,
    copy_tokenizer,
    model_out_config,
)
from mergekit_reasoning.executor.readahead import reclaimable_memory
from mergekit_reasoning.executor.recipe import CheckedRecipe
from mergekit_reasoning.executor.shard_writer import MappedShards
from mergekit_reasoning.method.compat import HEAD
from mergekit_reasoning.method.kernel import merge_tensor
from mergekit_reasoning.method.models import loader, local_folder, model_info, refuse_non_float_inputs
from mergekit_reasoning.method.reasoning_vector import own_executor

# Loaded bytes the input hasher may lag behind (InputHashes.wait_for_hasher), at most a
# quarter of reclaimable memory: on the 7B benchmark, 2 GiB made the merge wait on the
# hasher (53.8 s) and 4 or 8 GiB did not (49.9-51.7 s), each byte read from disk once.
HASH_BACKLOG = 4 << 30

LOG = logging.getLogger(__name__)


def merge(
    checked: CheckedRecipe,
    out_paths: Sequence[Path],
    options,
    *,
    lambdas: Optional[Sequence[float]] = None,
    overwrite: bool = False,
    inputs: Optional[List[Dict]] = None,
    reservation=None,
) -> List[Path]:
    """Merge `checked` into `out_paths` (one per λ in `lambdas`, or one with the recipe's λ).

    `reservation` (from `reserve.reserve`, for the same folders) offers output
    files paged in ahead of time; the caller releases what is left of it.
    """
    outs = [Path(p) for p in out_paths]
    if lambdas is not None and len(lambdas) != len(outs):
        raise RecipeError(f"{len(lambdas)} lambda values but {len(outs)} output folders")
    plan, cfg_out, arch_info = _plan(checked, options, outs[0])
    streamable = all(type(t.tensor_task.gather_tensors).__name__ == "GatherTensors" for t in plan)
    if not streamable and lambdas is not None:
        raise RecipeError("a λ sweep needs a streamable recipe; this one aligns tokenizers (`tokenizer:`)")

    target_tied = HEAD not in _target_names(checked)
    tasks = [t for t in plan if not (target_tied and t.tensor_name == HEAD)]
    device = torch.device(options.device or "cpu")
    # The inputs' digests for the manifest, taken while the merge runs (hashlib releases the
    # GIL): the weights' from the bytes the merge reads (`input_hashes`), everything else
    # (configs, tokenizers, pickled weights) beside it.
    planned = _planned_reads(tasks) if streamable else {}
    reads = planned if inputs is None else {}
    weights = _weight_files(checked) if reads else []
    hashes = (
        InputHashes(
            weights, [p for pairs in reads.values() for p in pairs], min(HASH_BACKLOG, reclaimable_memory() // 4)
        )
        if weights
        else None
    )
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-inputs")
    warmed = hashing.submit(_hash_the_rest, checked, set(weights)) if inputs is None else None
    try:
        with ExitStack() as outputs:
            staging = [outputs.enter_context(staged(out, overwrite=overwrite)) for out in outs]
            digests = [None] * len(outs)
            if streamable:
                entries = output_entries(tasks) if options.safe_serialization else None
                with ExitStack() as stack:
                    writers = [stack.enter_context(w) for w in _writers(staging, options, entries, reservation)]
                    _stream(tasks, writers, device, options, lambdas, InputSizes(planned), reads, hashes)
                digests = [getattr(writer, "digests", None) for writer in writers]
            else:
                LOG.warning("tokenizer alignment is not streamed: merging with mergekit's own executor")
                _mergekit_executor(checked, staging[0], outs[0].name, options)
            if inputs is None:
                warmed.result()
                inputs = describe_inputs(checked, known=hashes.digests() if hashes is not None else {})
            manifests = []
            for index, (path, out) in enumerate(zip(staging, outs)):
                if streamable:
                    _write_metadata(checked, cfg_out, arch_info, path, options, name=out.name)
                lam = None if lambdas is None else lambdas[index]
                manifests.append(
                    write_manifest(
                        path,
                        checked,
                        inputs,
                        lam=lam,
                        device=str(device),
                        out_shard_size=options.out_shard_size,
                        output_digests=digests[index],
                    )
                )
    finally:
        hashing.shutdown(wait=True, cancel_futures=True)
        if hashes is not None:
            hashes.close()
        _close_inputs()
    for out, manifest in zip(outs, manifests):  # now in place: scoring them needs no re-read
        for name, digest in manifest["outputs"].items():
            remember_digest(out / name, digest)
    return outs


def _close_inputs() -> None:
    """Close the shard each input loader holds open: its mapped pages would otherwise
    stay in this process's memory after the merge, while a Python caller goes on
    (to score the output, say)."""
    from mergekit.io.tasks import LoaderCache

    LoaderCache().flush_all()


def _plan(checked: CheckedRecipe, options, out: Path):
    """mergekit's own plan of the output tensors (its SaveTensor tasks), config and architecture."""
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import LoaderCache
    from mergekit.plan import MergePlanner

    config = checked.config.model_copy(deep=True)
    LoaderCache().setup(options=options)
    arch_info = get_architecture_info(config, options)
    cfg_out = model_out_config(config, arch_info, trust_remote_code=options.trust_remote_code)
    with own_executor():
        planner = MergePlanner(config, arch_info, options=options, out_model_config=cfg_out)
        return _in_save_order(planner.plan_to_disk(out_path=str(out))), cfg_out, arch_info


def _in_save_order(targets) -> list:
    """The plan's SaveTensor tasks in the order mergekit's own executor saves them.

    mergekit's writer fills a shard in the order tensors reach it and starts the next
    one when it is full, so that order decides which shard holds which tensor. It is
    the executor's schedule (its topological sort keyed on each task's group label and
    priority), not the plan's list, and only mergekit can say what it is: the
    schedule is built here with mergekit's own Executor, without running it.
    """
    from mergekit.graph import Executor

    saves = [t for t in targets if type(t).__name__ == "SaveTensor"]
    scheduled = [handle.task() for handle in Executor(targets=list(targets)).schedule.tasks]
    position = {t.tensor_name: i for i, t in enumerate(scheduled) if type(t).__name__ == "SaveTensor"}
    if set(position) != {t.tensor_name for t in saves}:
        return saves  # a mergekit that schedules otherwise: keep the plan's order
    return sorted(saves, key=lambda t: position[t.tensor_name])


def _mergekit_executor(checked: CheckedRecipe, path: Path, name: str, options) -> None:
    """The fallback for recipes this executor cannot stream: mergekit's run_merge."""
    from mergekit.merge import run_merge

    inner = path / name  # run_merge names the model card after its output folder
    run_merge(checked.config.model_copy(deep=True), str(inner), options=options, config_source=checked.text)
    for item in inner.iterdir():
        item.rename(path / item.name)
    inner.rmdir()


def _planned_reads(tasks) -> Dict[str, List[Tuple[Path, str]]]:
    """Per output tensor, the (file, stored tensor) pairs its loads read."""
    reads = {}
    for task in tasks:
        found = [stored_read(load) for load in task.tensor_task.gather_tensors.arguments().values()]
        reads[task.tensor_name] = [(Path(os.path.realpath(path)), name) for path, name in filter(None, found)]
    return reads


def _weight_files(checked: CheckedRecipe) -> List[Path]:
    """The inputs' safetensors files that need hashing: local ones, not hub blobs (which
    are named by their SHA-256)."""
    files = set()
    for ref, _ in input_roles(checked.config.base_model, checked.pairs):
        index = loader(ref).index
        for name in set(index.tensor_paths.values()):
            path = Path(os.path.realpath(os.path.join(index.base_path, name)))
            if path.suffix == ".safetensors" and not known_without_reading(path):
                files.add(path)
    return sorted(files)


def _hash_the_rest(checked: CheckedRecipe, weights) -> None:
    """Hash (into the cache) every input file the merge's reads do not digest."""
    for ref, _ in input_roles(checked.config.base_model, checked.pairs):
        folder, _ = local_folder(ref)
        for name in model_files(folder):
            path = Path(os.path.realpath(folder / name))
            if path not in weights:
                input_digest(folder / name)


def _stream(tasks, writers, device, options, lambdas, sizes, reads=None, hashes=None) -> None:
    import tqdm
    from mergekit.common import dtype_from_name

    mapped = isinstance(writers[0], MappedShards)
    if mapped:  # file order, so each shard's hash follows the writes
        position = {name: index for index, name in enumerate(writers[0].write_order())}
        tasks = sorted(tasks, key=lambda t: position[t.tensor_name])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(_load, tasks[0], sizes, hashes) if tasks else None
        for index, task in enumerate(tqdm.tqdm(tasks, desc="Merging", disable=options.quiet)):
            tensors = pending.result()
            if hashes is not None:  # its pages were just read: hash them while they are in memory
                for path, name in reads.get(task.tensor_name, ()):
                    hashes.loaded(path, name)
            pending = pool.submit(_load, tasks[index + 1], sizes, hashes) if index + 1 < len(tasks) else None
            if mapped:
                views = [writer.view(task.tensor_name) for writer in writers]
                _merge_one(task.tensor_task, tensors, device, lambdas, out=views)
                del views
                for writer in writers:
                    writer.finished(task.tensor_name)
            else:
                merged = _merge_one(task.tensor_task, tensors, device, lambdas)
                out_dtype = dtype_from_name(task.dtype)
                for writer, tensor in zip(writers, merged):
                    if out_dtype is not None:
                        tensor = tensor.to(dtype=out_dtype)
                    writer.save_tensor(task.tensor_name, tensor.to("cpu"), clone=options.clone_tensors)
                del merged
            del tensors


def _load(task, sizes: InputSizes, hashes: Optional[InputHashes] = None) -> Dict:
    """Read one output tensor's inputs, exactly as mergekit's LoadTensor tasks do, once
    the hasher has caught up with earlier loads (their pages are still cached) and
    `sizes` has seen that the files still hold them (a truncated mapped file is SIGBUS)."""
    if hashes is not None:
        hashes.wait_for_hasher()
    sizes.check(task.tensor_name)
    gather = task.tensor_task.gather_tensors
    loads = gather.arguments()
    keys = {f"{model}:{info.name}": model for model, info in gather.weight_info.items()}
    tensors = {}
    for key, load in loads.items():
        tensor = load.execute()
        if tensor is None:
            raise RecipeError(f"model {keys[key]}: tensor {load.tensor} is missing")
        tensors[keys[key]] = tensor
    return tensors


def _merge_one(task, tensors: Dict, device: torch.device, lambdas, out=None) -> List[torch.Tensor]:

    donors = [m for m in task.model_order if m != task.base_model]
    refuse_non_float_inputs(task.output_weight.name, [task.base_model, *donors])
    params = task.input_parameters
    return merge_tensor(
        tensors[task.base_model].to(device),
        {m: tensors[m].to(device) for m in donors},
        {m: params[m]["role"] for m in donors},
        {m: params[m]["vector"] for m in donors},
        {m: params[m]["lambda"] for m in donors},
        name=task.output_weight.name,
        vocab_axis=task.output_weight.vocabulary_axis,
        lambda_values=lambdas,
        out=out,
    )


def _target_names(checked: CheckedRecipe):

    return model_info(checked.config.base_model).shapes


def _writers(staging: Sequence[Path], options, entries, reservation) -> list:
    """Mapped writers when every output's header is known and the folders can be mapped
    (some network and FUSE file systems cannot), else mergekit's, for every output alike."""
    if entries is None:
        return [_tensor_writer(path, options) for path in staging]
    made = []
    try:
        for index, path in enumerate(staging):
            reserved = reservation.take(index) if reservation is not None else []
            made.append(
                MappedShards(path, entries, options.out_shard_size, metadata.version("mergekit"), reserved=reserved)
            )
    except OSError as error:
        for writer in made:
            writer.remove()
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RecipeError(f"no room for the output in {Path(staging[0]).parent}: {error.strerror}") from None
        LOG.warning("cannot map the output files (%s): writing them with mergekit's writer", error)
        return [_tensor_writer(path, options) for path in staging]
    return made


def _tensor_writer(path: Path, options):
    from mergekit.io.tensor_writer import TensorWriter

    return TensorWriter(
        str(path),
        max_shard_size=options.out_shard_size,
        safe_serialization=options.safe_serialization,
        use_async=True,
        max_write_threads=1,
    )


def _write_metadata(checked: CheckedRecipe, cfg_out, arch_info, path: Path, options, *, name: str) -> None:
    """Config, tokenizer, model card and tag-along files, as `mergekit-yaml` writes them."""
    from mergekit.card import generate_card

    from mergekit_reasoning.method.merge_card import with_reasoning_section

    config = checked.config
    cfg_out.save_pretrained(str(path))
    if options.write_model_card:
        card_config = _card_config(checked)
        card = generate_card(config=card_config, config_yaml=checked.text, name=name)
        if not getattr(generate_card, "_mergekit_reasoning_card", False):
            card = with_reasoning_section(card, card_config)
        (path / "README.md").write_text(card, encoding="utf-8")
        (path / "mergekit_config.yml").write_text(checked.text, encoding="utf-8")
    if options.copy_tokenizer:
        try:
            copy_tokenizer(config, str(path), options=options)
        except Exception as error:  # as mergekit-yaml: the weights are still good
            LOG.error("Failed to copy the tokenizer (%s); copy it from the target yourself.", error)
    copy_tagalong_files(config, str(path), files=arch_info.tagalong_files or [], options=options)


def _card_config(checked: CheckedRecipe):
    """The recipe as mergekit's card generator should see it. For a `name/part` reference
    it asks the hub whether that is a repository, even when a local folder of that name
    exists, and offline the question is an error: such folders are written `./name/part`."""
    from mergekit.config import MergeConfiguration

    def explicit(value):
        if isinstance(value, dict):
            return {k: _local_spelled_out(v) if k in ("model", "base_model") else explicit(v) for k, v in value.items()}
        if isinstance(value, list):
            return [explicit(v) for v in value]
        return value

    data = yaml.safe_load(checked.text)
    return MergeConfiguration.model_validate(explicit(data)) if isinstance(data, dict) else checked.config


def _local_spelled_out(ref):
    if not isinstance(ref, str) or ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        return ref
    return "./" + ref if os.path.isdir(ref.split("@")[0].split("+")[0]) else ref
