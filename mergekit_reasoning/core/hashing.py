"""Content hashes of model files, remembered so that big inputs are hashed once.

Manifests name every input and output file by SHA-256. Hashing a 15 GB model on
every regeneration would cost more than the merge, so a file's hash is cached
under its path, size, modification and change times and inode; any change to the file
changes one of them and forces a fresh hash.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Tuple

CHUNK = 16 * 1024 * 1024
Identity = Tuple  # of (path, size, mtime_ns, inode) per file, or other hashable parts


def path_identity(path: os.PathLike) -> Identity:
    """The identity of a file, or of every file directly in a folder: what changes when
    any of them is rewritten, replaced or resized (links followed, as readers follow them)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    identity = []
    for file in files:
        stat = file.stat()
        identity.append((str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(identity)


def sha256_file(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """The package's cache folder: $MERGEKIT_REASONING_CACHE, else $XDG_CACHE_HOME/mergekit-reasoning,
    else ~/.cache/mergekit-reasoning."""
    root = os.environ.get("MERGEKIT_REASONING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mergekit-reasoning"
    )
    return Path(root)


def _cache_path() -> Path:
    return cache_root() / "file-hashes.json"


def cached_sha256(path: os.PathLike) -> str:
    """SHA-256 of `path`, from the cache when the file is unchanged since it was hashed.

    A file in the Hugging Face cache is a link to a blob named by its SHA-256
    (for LFS files, which weights are), so hub inputs cost nothing to hash.
    """
    path = Path(path).resolve()
    if _named_by_digest(path):
        return path.name
    key = _key(path)
    known = _read_cache().get(key)
    if known is not None:
        return known
    digest = sha256_file(path)
    _store(path, key, digest)
    return digest


def _named_by_digest(path: Path) -> bool:
    return path.parent.name == "blobs" and len(path.name) == 64 and all(c in "0123456789abcdef" for c in path.name)


def known_without_reading(path: os.PathLike) -> bool:
    """Whether `cached_sha256` would answer without reading the file: a hub blob named by
    its digest, or a cache entry for this path, size, modification time and inode."""
    path = Path(path).resolve()
    return _named_by_digest(path) or _key(path) in _read_cache()


def remember_sha256(path: os.PathLike, digest: str) -> None:
    """Record a hash computed elsewhere (a merge hashes the shards it writes), so the
    next reader of the file, such as the benchmark harness, need not read it again."""
    path = Path(path).resolve()
    _store(path, _key(path), digest)


def _key(path: Path) -> str:
    stat = path.stat()  # ctime too: a rewrite that restores the modification time still moves it
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"


def _read_cache() -> Dict[str, str]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _store(path: Path, key: str, digest: str) -> None:
    cache = {k: v for k, v in _read_cache().items() if not k.startswith(f"{path}|")}
    cache[key] = digest
    cache_file = _cache_path()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only home only costs a re-hash next time


def hash_files(folder: Path, names: Iterable[str], *, cached: bool = True) -> Dict[str, str]:
    hasher = cached_sha256 if cached else sha256_file
    return {name: hasher(Path(folder) / name) for name in sorted(names)}


# Besides the weights, the files that change what a model computes or how it is prompted.
DEFINING_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def model_files(folder: Path) -> list:
    """The files that define a model: weights, config, index, tokenizer and generation settings."""
    folder = Path(folder)
    names = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    names += [n for n in DEFINING_FILES if (folder / n).exists()]
    return sorted(set(names))
