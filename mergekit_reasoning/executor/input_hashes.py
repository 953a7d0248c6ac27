"""The inputs' manifest digests, taken from the bytes the merge reads, as it reads them.

A file SHA-256 must follow the file's own order, and a merge reads its inputs in the
output's order: with inputs larger than memory (a 7B merge reads 45 GB on a 24 GB
machine), hashing them beside the merge read most of them from disk twice. So each
input weight file is digested by its byte ranges (`core.hashing.RANGES`): each time
the merge has loaded a tensor, the range that holds it is hashed from the
same file, while its pages are still in the page cache; the ranges no load touches (headers,
tensors the plan leaves out) are hashed alongside from the start. Hub blobs are named
by their SHA-256 and need no hashing at all.
"""

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

from mergekit_reasoning.core.formats import byte_ranges
from mergekit_reasoning.core.hashing import combine_ranges, hash_range, remember_digest


class _File:
    def __init__(self, path: Path):
        self.path = path
        self.ranges, self.where = byte_ranges(path)
        self.fd = os.open(path, os.O_RDONLY)
        self.digests: Dict[int, Future] = {}


class InputHashes:
    """Ranges digests of the given safetensors files, fed by the merge's loads."""

    def __init__(self, files: Iterable[Path], planned: Iterable[Tuple[Path, str]], backlog: int = 4 << 30):
        """`planned` are the (file, tensor) pairs the merge will load; every other range
        is hashed from the start, beside the merge. `backlog`: the loaded bytes the
        hasher may lag behind (see `wait_for_hasher`)."""
        self.backlog = backlog
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash-input-ranges")
        self._lock = threading.Lock()
        self._caught_up = threading.Condition(self._lock)
        self._behind = 0  # bytes the merge has loaded and the hasher has not yet read
        self._files: Dict[Path, _File] = {}
        for path in files:
            self._files[Path(path)] = _File(Path(path))
        loaded: Dict[Path, Set[int]] = {}
        for path, name in planned:
            file = self._files.get(Path(path))
            if file is not None and name in file.where:
                loaded.setdefault(file.path, set()).add(file.where[name])
        self.hashed_bytes = 0
        for file in self._files.values():
            for index in range(len(file.ranges)):
                if index not in loaded.get(file.path, ()):
                    self._submit(file, index)

    def loaded(self, path: Path, name: str) -> None:
        """The merge has just read tensor `name` of `path`: hash its range now."""
        file = self._files.get(Path(path))
        if file is not None and name in file.where:
            self._submit(file, file.where[name], cached=True)

    def wait_for_hasher(self) -> None:
        """Block until at most `backlog` loaded bytes wait for the hasher. On a busy machine
        hashing can fall behind reading; a merge let run ahead would leave pages to be
        evicted before they are hashed, and they would be read from disk again."""
        with self._caught_up:
            self._caught_up.wait_for(lambda: self._behind <= self.backlog)

    def _submit(self, file: _File, index: int, cached: bool = False) -> None:
        with self._lock:
            if index in file.digests:
                return
            begin, end = file.ranges[index]
            self.hashed_bytes += end - begin
            future = self._pool.submit(hash_range, file.fd, begin, end)
            file.digests[index] = future
            if cached:
                self._behind += end - begin
        # Outside the lock: a future already done runs its callback here, and _hashed takes the lock.
        if cached:
            future.add_done_callback(lambda _, size=end - begin: self._hashed(size))

    def _hashed(self, size: int) -> None:
        with self._caught_up:
            self._behind -= size
            self._caught_up.notify_all()

    def digests(self) -> Dict[Path, str]:
        """Each file's ranges digest (ranges no load reached are hashed now), remembered in
        the hash cache so the next reader of an unchanged file need not read it."""
        out = {}
        for file in self._files.values():
            for index in range(len(file.ranges)):
                self._submit(file, index)
            parts: List[bytes] = [file.digests[i].result() for i in range(len(file.ranges))]
            out[file.path] = combine_ranges(parts)
            remember_digest(file.path, out[file.path])
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for file in self._files.values():
            os.close(file.fd)
