"""Reasoning vectors as files: extract once, share, apply anywhere.

A vector folder looks like a model folder to mergekit (a `config.json` taken from
the GRPO model, safetensors shards written by mergekit's writer), so a recipe
uses it as a donor with `role: vector`. Beside them, `reasoning_vector.json`
records where the vector came from, its dtype and sparsification, and every
tensor's shape, norm and distance from the full vector, plus shard hashes.

Stored in float32 without sparsification the vector holds exactly the float32
differences the merge computes, so applying it gives the same bits as the pair.
"""

import dataclasses
import json
import math
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import load_tensor, tensor_files
from mergekit_reasoning.core.hashing import sha256_file
from mergekit_reasoning.core.reductions import BLOCK, float64_blocks
from mergekit_reasoning.core.staging import refuse_non_empty, refuse_output_over_inputs, staged
from mergekit_reasoning.method.compat import HEAD, STRUCTURE_KEYS, source_tensor
from mergekit_reasoning.method.vector_format import (
    DTYPES,
    FORMAT,
    INDICES,
    MANIFEST,
    VALUES,
    check_shard_hashes,
    read_manifest,
)
from mergekit_reasoning.vectors.card import donor_license, write_card

SPARSIFY = ("magnitude", "dare")
STORAGES = ("dense", "sparse")


@dataclass(frozen=True)
class Sparsify:
    method: str  # "magnitude": keep the largest |v|; "dare": keep at random, rescale
    density: float
    seed: int = 0

    def __post_init__(self):
        if self.method not in SPARSIFY:
            raise RecipeError(f"unknown sparsification {self.method!r}: use {' or '.join(SPARSIFY)}")
        if not 0 < self.density <= 1:
            raise RecipeError(f"density must be in (0, 1], got {self.density}")

    def apply(self, name: str, vector: torch.Tensor) -> torch.Tensor:
        if self.density == 1:
            return vector
        flat = vector.reshape(-1)
        if self.method == "magnitude":
            keep = max(1, round(self.density * flat.numel()))
            magnitude = flat.abs()
            threshold = magnitude.kthvalue(flat.numel() - keep + 1).values
            mask = magnitude > threshold
            # Exactly `keep` entries: ties at the threshold are taken in storage order.
            ties = (magnitude == threshold).nonzero().squeeze(1)[: keep - int(mask.sum())]
            mask[ties] = True
            return torch.where(mask, flat, torch.zeros_like(flat)).reshape(vector.shape)
        # DARE: an independent, reproducible draw per tensor, whatever the tensor order.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        mask = torch.rand(vector.shape, generator=generator) < self.density
        return torch.where(mask, vector / self.density, torch.zeros_like(vector))


def extract(
    grpo,
    sft,
    out: Path,
    *,
    dtype: str = "float32",
    sparsify: Optional[Sparsify] = None,
    storage: str = "dense",
    max_shard_size: int = 5_000_000_000,
    overwrite: bool = False,
    echo=lambda line: None,
) -> Dict:
    """Write `grpo − sft` as a vector folder at `out` and return its manifest.

    `storage="sparse"` keeps only the nonzero entries (flat indices and values)
    for sharing; `densify` turns such a folder back into the dense one, bit for
    bit, which is what recipes apply.
    """
    if storage not in STORAGES:
        raise RecipeError(f"unknown storage {storage!r}: use {' or '.join(STORAGES)}")
    from mergekit.common import ModelReference
    from mergekit.io.tensor_writer import TensorWriter

    from mergekit_reasoning.core.hashing import hash_files
    from mergekit_reasoning.core.provenance import package_versions
    from mergekit_reasoning.method.compat import check_compatible
    from mergekit_reasoning.method.models import loader, model_info

    if dtype not in DTYPES:
        raise RecipeError(f"unknown vector dtype {dtype!r}: use {' or '.join(DTYPES)}")
    grpo, sft = ModelReference.model_validate(str(grpo)), ModelReference.model_validate(str(sft))
    out = Path(out)
    local = [Path(ref.model.path) for ref in (grpo, sft) if Path(ref.model.path).exists()]
    for folder in local:
        if (folder / MANIFEST).exists():
            raise RecipeError(f"model {folder} is a vector folder, not a model: extract takes the GRPO and SFT models")
    refuse_output_over_inputs(out, local)
    refuse_non_empty(out, overwrite)  # before reading any weights
    g_info, s_info = model_info(grpo), model_info(sft)
    report = check_compatible(s_info, [g_info], what="the SFT model")
    for note in dataclasses.replace(report, dropped_heads=[]).notes():  # the head is kept, not dropped: said below
        echo(f"warning: {note}")
    if (HEAD in g_info.shapes) != (HEAD in s_info.shapes):
        untied = "GRPO" if HEAD in g_info.shapes else "SFT"
        echo(
            f"note: only the {untied} model stores lm_head.weight; the vector keeps it, against the other's embeddings"
        )

    names = list(g_info.shapes)
    if (HEAD in g_info.shapes) != (HEAD in s_info.shapes) and HEAD not in names:
        names.append(HEAD)  # one side is untied: keep its head, the other's head is its embeddings
    g_load, s_load = loader(grpo), loader(sft)
    tensors, total, total_full, total_error = {}, 0.0, 0.0, 0.0
    with staged(out, overwrite=overwrite) as staging:
        with TensorWriter(str(staging), max_shard_size=max_shard_size) as writer:
            for name in names:
                g = g_load.get_tensor(source_tensor(g_info, name))
                s = s_load.get_tensor(source_tensor(s_info, name))
                if g.shape != s.shape:  # vocabulary rows: the shared ones
                    rows = min(g.shape[0], s.shape[0])
                    g, s = g[:rows], s[:rows]
                full = g.to(torch.float32, copy=True)
                full.sub_(s)  # the same float32 difference the merge kernel computes
                stored = (sparsify.apply(name, full) if sparsify else full).to(DTYPES[dtype])
                norm, full_norm, error = _norms(stored, full)
                tensors[name] = {
                    "shape": list(stored.shape),
                    "dtype": dtype,
                    "norm": norm,
                    "full_norm": full_norm,
                    "relative_error": error / full_norm if full_norm else 0.0,
                    "density": float((stored != 0).sum()) / max(stored.numel(), 1),
                }
                total += norm**2
                total_full += full_norm**2
                total_error += error**2
                for key, tensor in _stored_tensors(name, stored, storage):
                    writer.save_tensor(key, tensor)
                del g, s, full, stored

        config = dict(g_info.config)
        config.pop("torch_dtype", None)
        config.update(dtype=dtype, tie_word_embeddings=HEAD not in tensors)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        shards = sorted(p.name for p in staging.glob("*.safetensors"))
        manifest = {
            "format": FORMAT,
            "version": 1,
            "sources": {role: _source(ref) for role, ref in (("grpo", grpo), ("sft", sft))},
            "dtype": dtype,
            "storage": storage,
            "max_shard_size": max_shard_size,
            "sparsify": None if sparsify is None else vars(sparsify),
            "architecture": {k: config.get(k) for k in ("architectures", *STRUCTURE_KEYS)},
            "total_norm": math.sqrt(total),
            "relative_error": math.sqrt(total_error / total_full) if total_full else 0.0,
            "tensors": tensors,
            "shards": hash_files(staging, shards, cached=False),
            "packages": package_versions(),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        write_card(staging, manifest, name=out.name)
    return manifest


def _norms(stored: torch.Tensor, full: torch.Tensor, block: int = BLOCK):
    """‖stored‖, ‖full‖ and ‖stored − full‖, summed in float64."""
    squares = [0.0, 0.0, 0.0]
    for s, f in float64_blocks(stored, full, block=block):
        for i, part in enumerate((s, f, s - f)):
            squares[i] += float(part.square().sum())
    return tuple(math.sqrt(x) for x in squares)


def _stored_tensors(name: str, tensor: torch.Tensor, storage: str):
    """What one vector tensor is saved as: itself, or its nonzero entries."""
    if storage == "dense":
        return [(name, tensor.contiguous())]
    flat = tensor.reshape(-1)
    index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
    indices = flat.nonzero().squeeze(1)
    return [(name + INDICES, indices.to(index_dtype)), (name + VALUES, flat[indices].contiguous())]


def dense_tensors(folder: Path, manifest: Dict):
    """(name, dense tensor) for every tensor of a vector folder, sparse or dense."""
    where = tensor_files(folder)
    for key in sorted(where, key=lambda k: (where[k], k)):
        if manifest.get("storage") != "sparse":
            yield key, load_tensor(where[key], key)
        elif key.endswith(VALUES):
            name = key[: -len(VALUES)]
            if name not in manifest["tensors"] or name + INDICES not in where:
                raise RecipeError(f"vector {folder}: {key} belongs to no tensor of its manifest")
            values, indices = load_tensor(where[key], key), load_tensor(where[name + INDICES], name + INDICES)
            shape = manifest["tensors"][name]["shape"]
            _check_sparse_entries(folder, name, indices, values, math.prod(shape))
            dense = torch.zeros(math.prod(shape), dtype=values.dtype)
            dense[indices.long()] = values
            yield name, dense.reshape(shape)


def _check_sparse_entries(folder: Path, name: str, indices: torch.Tensor, values: torch.Tensor, size: int) -> None:
    """Sparse entries as extraction writes them: integer flat indices, strictly increasing,
    inside the tensor, one value each. Anything else would write outside the tensor or
    silently overwrite entries."""
    ok = (
        indices.dtype in (torch.int32, torch.int64)
        and indices.dim() == 1
        and values.dim() == 1
        and indices.numel() == values.numel()
    )
    if ok and indices.numel():
        wide = indices.long()
        ok = int(wide[0]) >= 0 and int(wide[-1]) < size and bool((wide[1:] > wide[:-1]).all())
    if not ok:
        raise RecipeError(
            f"vector {folder}: the sparse entries of {name} are malformed (indices out of range, repeated, "
            "out of order, or not one per value)"
        )


def densify(source: Path, out: Path, *, overwrite: bool = False) -> Dict:
    """Rebuild the dense vector folder from a sparse one, bit for bit."""
    from mergekit.io.tensor_writer import TensorWriter

    from mergekit_reasoning.core.hashing import hash_files

    source, out = Path(source), Path(out)
    manifest = read_manifest(source)
    if manifest is None or manifest.get("storage") != "sparse":
        raise RecipeError(f"{source} is not a sparse vector folder")
    refuse_output_over_inputs(out, [source])
    refuse_non_empty(out, overwrite)
    check_shard_hashes(source, manifest, sha256_file)  # a tampered source is not laundered into a clean manifest
    with staged(out, overwrite=overwrite) as staging:
        with TensorWriter(str(staging), max_shard_size=manifest.get("max_shard_size", 5_000_000_000)) as writer:
            for name, tensor in _in_manifest_order(dense_tensors(source, manifest), manifest):
                writer.save_tensor(name, tensor)
        shutil.copy(source / "config.json", staging / "config.json")
        dense = dict(manifest, storage="dense")
        dense["shards"] = hash_files(staging, sorted(p.name for p in staging.glob("*.safetensors")), cached=False)
        (staging / MANIFEST).write_text(json.dumps(dense, indent=2) + "\n")
        write_card(staging, dense, name=out.name, densified_from=source.name)
    return dense


def _in_manifest_order(pairs, manifest):
    """Tensors in the order extraction wrote them, so shards match a dense extraction."""
    tensors = dict(pairs)
    return [(name, tensors[name]) for name in manifest["tensors"]]


def _source(ref) -> Dict:
    from mergekit_reasoning.method.models import local_folder

    folder, revision = local_folder(ref)
    return {"model": str(ref), "revision": revision, "license": donor_license(folder, str(ref), revision)}
