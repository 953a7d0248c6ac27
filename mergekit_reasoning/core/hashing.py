"""Content hashes of model files, remembered so that big inputs are hashed once.

Manifests name every output file, and every input file that is not a safetensors
weight file, by SHA-256; input weights by a ranges digest (below). Hashing a 15 GB model on
every regeneration would cost more than the merge, so a file's hash is cached
under its path, size, modification and change times and inode; any change to the file
changes one of them and forces a fresh hash.
"""

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from blake3 import blake3

from mergekit_reasoning.core.formats import byte_ranges

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


def _digest_kind(path: Path, like: Optional[str]) -> str:
    """How an input file is digested: "blob" (a hub blob, by its own name), a ranges
    scheme (a safetensors file; `RANGES` for new digests) or "sha256"; `like`, a recorded
    digest, keeps its kind."""
    scheme = ranges_scheme(like)
    if scheme is not None:
        return scheme
    if _named_by_digest(path.resolve()):
        return "blob"
    if like is not None:
        return "sha256"
    return RANGES if path.suffix == ".safetensors" else "sha256"


def _cache_key(path: Path, kind: str) -> str:
    return _key(path.resolve()) + ("" if kind == "sha256" else "|" + kind.rstrip(":"))


def known_without_reading(path: os.PathLike, like: Optional[str] = None) -> bool:
    """Whether `input_digest(path, like=like)` would answer without reading the file: a hub
    blob named by its digest, or a cache entry of that kind for this path, size,
    modification and change times and inode."""
    path = Path(path)
    kind = _digest_kind(path, like)
    return kind == "blob" or _cache_key(path, kind) in _read_cache()


def _key(path: Path) -> str:
    stat = path.stat()  # ctime too: a rewrite that restores the modification time still moves it
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"


def _read_cache() -> Dict[str, str]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _store(path: Path, key: str, digest: str) -> None:
    current = _key(path)  # entries for this path's earlier contents go; its other kinds of digest stay
    cache = {k: v for k, v in _read_cache().items() if not k.startswith(f"{path}|") or k.startswith(current)}
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


# An input weight file's digest in a manifest: a hash over the hashes of each of its byte
# ranges in file order (`formats.byte_ranges`: header, each tensor, any gap), written
# "<scheme><hex>". Each range's hash can be taken whenever the merge has just read that
# tensor, in any order, so an input larger than memory is read from disk once; a plain
# file SHA-256 could only follow the file's own order. Plain hex is a file's SHA-256.
# New digests use BLAKE3 (the `blake3` package): on one core it hashes about 4× faster
# than SHA-256 (4.8 against 1.1 GB/s here), and a first 7B merge on 2 cores is bound by
# hashing 45 GB of inputs. "ranges:" is the SHA-256 scheme older manifests hold.
RANGE_SCHEMES = {"blake3-ranges:": blake3, "ranges:": hashlib.sha256}
RANGES = "blake3-ranges:"


def ranges_scheme(digest: Optional[str]) -> Optional[str]:
    """The ranges scheme a recorded digest was written with, or None (a plain SHA-256)."""
    return next((scheme for scheme in RANGE_SCHEMES if digest is not None and digest.startswith(scheme)), None)


def combine_ranges(range_digests: Iterable[bytes], scheme: str = RANGES) -> str:
    return scheme + RANGE_SCHEMES[scheme](b"".join(range_digests)).hexdigest()


def hash_range(fd: int, begin: int, end: int, scheme: str = RANGES) -> bytes:
    """The hash of bytes [begin, end) of an open file, read a step at a time with preadv
    into one buffer per thread: from the page cache when the merge has just read them,
    and into a buffer rather than a mapping, so hashing adds nothing to the process's
    resident memory (nor, with the buffer reused, fresh pages to fault in and zero)."""
    digest = RANGE_SCHEMES[scheme]()
    buffer = getattr(_buffers, "view", None)
    if buffer is None:
        buffer = _buffers.view = memoryview(bytearray(CHUNK))
    for start in range(begin, end, CHUNK):
        wanted = min(end, start + CHUNK) - start
        got = os.preadv(fd, [buffer[:wanted]], start)
        if got < wanted:
            raise OSError(f"file ended at byte {start + got}, its header says {end}")
        digest.update(buffer[:got])
    return digest.digest()


_buffers = threading.local()


def ranges_digest(path: os.PathLike, scheme: str = RANGES) -> str:
    """The ranges digest of a safetensors file, reading it once, in order."""
    ranges, _ = byte_ranges(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return combine_ranges((hash_range(fd, begin, end, scheme) for begin, end in ranges), scheme)
    finally:
        os.close(fd)


def input_digest(path: os.PathLike, *, like: Optional[str] = None, cached: bool = True) -> str:
    """An input file's digest for a manifest: a hub blob's own name; for a safetensors
    file, its ranges digest; else its SHA-256. `like` (a recorded digest) picks the kind,
    so a manifest is checked the way it was written; without `cached` every file is read."""
    path = Path(path)
    kind = _digest_kind(path, like)
    if kind == "blob":
        return path.resolve().name if cached else sha256_file(path)
    if kind == "sha256":
        return cached_sha256(path) if cached else sha256_file(path)
    known = _read_cache().get(_cache_key(path, kind)) if cached else None
    if known is not None:
        return known
    digest = ranges_digest(path, kind)
    remember_digest(path, digest)
    return digest


def remember_digest(path: os.PathLike, digest: str) -> None:
    """Record a digest computed elsewhere (a merge hashes the shards it writes, and the inputs'
    ranges as it reads them), so the next reader of the file need not read it again."""
    path = Path(path).resolve()
    _store(path, _cache_key(path, ranges_scheme(digest) or "sha256"), digest)


def input_digests(
    folder: Path,
    names: Iterable[str],
    *,
    known: Optional[Dict[str, str]] = None,
    like: Optional[Dict[str, str]] = None,
    cached: bool = True,
) -> Dict[str, str]:
    """Manifest digests of a model's files; `known` holds those already taken (by the merge)."""
    known, like = known or {}, like or {}
    return {
        name: known[name] if name in known else input_digest(Path(folder) / name, like=like.get(name), cached=cached)
        for name in sorted(names)
    }


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
