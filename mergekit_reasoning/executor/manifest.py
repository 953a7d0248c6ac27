"""A merge's manifest: what went in, what came out, and how to check it again.

Every merge by `mergekit-reasoning merge` writes `reasoning_merge.json` beside its
shards: the recipe and its hash, each input's revision and file hashes, package
versions, and the hash of every output shard. `verify` recomputes the hashes and
names any shard that changed; `regenerate` compares the inputs' key with the one
recorded to decide whether a merge is stale.
"""

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.hashing import hash_files, input_digests, known_without_reading, model_files, sha256_file
from mergekit_reasoning.core.provenance import package_versions

NAME = "reasoning_merge.json"
FORMAT = "mergekit-reasoning/merge"


def describe_inputs(checked, *, known: Optional[Dict[Path, str]] = None) -> List[Dict[str, Any]]:
    """Each model the recipe reads: reference, revision and file digests; `known` holds
    digests the merge took itself (by resolved path)."""
    from mergekit_reasoning.method.models import local_folder

    models = []
    for ref, role in input_roles(checked.config.base_model, checked.pairs):
        folder, revision = local_folder(ref)
        models.append((str(ref), role, folder, revision))
    return describe_models(models, known=known)


def input_roles(target, pairs) -> List[Tuple[Any, str]]:
    """(model, role) for the target and every donor, in the order manifests list them."""
    roles = {target: "target"}
    for pair in pairs:
        roles[pair.grpo] = "grpo" if pair.sft is not None else "vector"
        if pair.sft is not None:
            roles[pair.sft] = "sft"
    return list(roles.items())


def describe_models(models, *, known: Optional[Dict[Path, str]] = None) -> List[Dict[str, Any]]:
    """Manifest entries for (name, role, local folder, revision) tuples. Weight files are
    digested by byte ranges (`hashing.RANGES`), hub blobs by their own names (listed
    under `hub_blob_names`, so a reader knows no byte was hashed for them)."""
    entries = []
    for name, role, folder, revision in models:
        names = model_files(folder)
        resolved = {n: Path(os.path.realpath(Path(folder) / n)) for n in names}
        taken = {n: known[p] for n, p in resolved.items() if known and p in known}
        entry = {"model": name, "role": role, "revision": revision, "files": input_digests(folder, names, known=taken)}
        blobs = [n for n, p in resolved.items() if p.parent.name == "blobs" and entry["files"][n] == p.name]
        if blobs:
            entry["hub_blob_names"] = blobs
        entries.append(entry)
    return entries


def input_key(recipe_text: str, inputs: List[Dict[str, Any]], lam: Optional[float] = None) -> str:
    """Content address of a merge: changes exactly when the recipe or an input does."""
    payload = json.dumps(
        {
            "recipe": recipe_text,
            "lambda": lam,
            "inputs": [{k: i[k] for k in ("model", "role", "files")} for i in inputs],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def write_manifest(
    folder: Path,
    checked,
    inputs: List[Dict[str, Any]],
    *,
    lam: Optional[float],
    device: str,
    out_shard_size: int,
    output_digests: Optional[Dict[str, str]] = None,
) -> Dict:
    """Write the manifest; `output_digests` are the shards' SHA-256 when the writer computed them."""
    shards = sorted(p.name for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))
    if output_digests is not None and sorted(output_digests) != shards:
        raise RuntimeError(f"{folder}: shards {shards} but digests for {sorted(output_digests)}")
    manifest = {
        "format": FORMAT,
        "version": 1,
        "key": input_key(checked.text, inputs, lam),
        "recipe_sha256": hashlib.sha256(checked.text.encode()).hexdigest(),
        "recipe": checked.text,
        "lambda_override": lam,
        "inputs": inputs,
        "packages": package_versions(),
        "python": platform.python_version(),
        "device": device,
        "out_shard_size": out_shard_size,
        "outputs": dict(sorted(output_digests.items()))
        if output_digests is not None
        else hash_files(folder, shards, cached=False),
    }
    (Path(folder) / NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> Dict:
    path = Path(folder) / NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{folder}: no {NAME} (was it merged by `mergekit-reasoning merge`?)") from None
    except ValueError as error:
        raise RecipeError(f"{path}: not valid JSON: {error}") from None
    if manifest.get("format") != FORMAT:
        raise RecipeError(f"{path}: not a mergekit-reasoning merge manifest")
    return manifest


def completed(folder: Path) -> Optional[Dict]:
    """The one rule for a finished merge: its manifest, or None when it has none.

    A merge is written into a staging folder, its manifest last, and renamed into
    place whole, so a folder with a readable manifest whose shards are all there is
    complete; anything else (an interrupted run, a foreign folder) is not.
    """
    if not Path(folder).is_dir():
        return None
    try:
        manifest = read_manifest(folder)
    except RecipeError:
        return None
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict) or not all((Path(folder) / name).is_file() for name in outputs):
        return None
    return manifest


def output_problems(folder: Path, manifest: Dict) -> List[str]:
    """Every shard of a merge that is missing, extra, or differs from its recorded hash."""
    return shard_problems(folder, manifest["outputs"])


def shard_problems(folder: Path, recorded: Dict[str, str]) -> List[str]:
    """Every shard that is missing, extra, or differs from `recorded` (name -> SHA-256)."""
    folder = Path(folder)
    present = {p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")}
    problems = [f"shard {name}: missing" for name in sorted(set(recorded) - present)]
    problems += [f"shard {name}: not in the manifest" for name in sorted(present - set(recorded))]
    for name in sorted(set(recorded) & present):
        if sha256_file(folder / name) != recorded[name]:
            problems.append(f"shard {name}: content differs from the manifest (edited or corrupted)")
    return problems


def input_problems(manifest: Dict, *, rehash: bool = False) -> Tuple[List[str], int]:
    """Inputs whose files no longer hash as they did when the merge was made, and how many
    files' hashes came from the hash cache (keyed on path, size, modification time and
    inode, or a hub blob's own name) rather than a read; `rehash` reads every file."""
    from mergekit.common import ModelReference

    from mergekit_reasoning.method.models import local_folder

    problems, from_cache = [], 0
    for entry in manifest["inputs"]:
        folder, _ = local_folder(ModelReference.model_validate(entry["model"]))
        present = [n for n in entry["files"] if (folder / n).exists()]
        if not rehash:
            from_cache += sum(known_without_reading(folder / n, like=entry["files"][n]) for n in present)
        current = input_digests(folder, present, like=entry["files"], cached=not rehash)
        for name, digest in entry["files"].items():
            if current.get(name) != digest:
                problems.append(f"input {entry['model']}: {name} changed since the merge")
        for name in sorted(set(model_files(folder)) - set(entry["files"])):
            problems.append(
                f"input {entry['model']}: {name} is not in the manifest (new since the merge, or not recorded then)"
            )
    return problems, from_cache
