"""Output files paged in while Python is still importing mergekit.

Writing a 3 GB output through a fresh mapping costs the kernel a fault, a page
allocation and a zeroing per 4 KB page: on the project's 2-core VM that was
about 2 s, as long as all the arithmetic. None of it needs the merge plan,
only the output's size, which the recipe's target tells before mergekit is
imported, and that import keeps one core busy for seconds while the other
idles. So `mergekit-reasoning merge` reserves its output files first: hidden
files beside the output folder, mapped and paged in by a background thread
(`madvise(MADV_POPULATE_WRITE)` through ctypes, which releases the GIL). The
mapped writer (`shard_writer.py`) then takes each file with its mapping, sets
it to the exact size and writes every byte of it; its contents never depend on
the guess. Linux 5.14+ only; elsewhere, or when anything here fails, there is
no reservation and the writer maps new files as before.
"""

import ctypes
import logging
import math
import mmap
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from mergekit_reasoning.core.formats import ELEMENT_BYTES, NAMED_BYTES, split_by_size, stored_tensors, weight_files
from mergekit_reasoning.core.staging import remove_leftovers
from mergekit_reasoning.executor.recipe import Recipe, model_dir

LOG = logging.getLogger(__name__)
MADV_POPULATE_WRITE = 23  # linux/mman.h, since Linux 5.14
STEP = 64 << 20  # bytes paged in per call, so a cancel waits for one call at most


@dataclass
class ReservedFile:
    """A hidden file and its writable mapping, to become one output shard."""

    path: Path
    map: mmap.mmap


class Reservation:
    """Reserved files for each output folder, paged in by a background thread."""

    def __init__(self, files: List[List[ReservedFile]], budget: int):
        self._files = files
        self._made = [reserved for made in files for reserved in made]  # taken ones too, see release
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._page_in, args=(budget,), name="reserve-outputs", daemon=True)
        self._thread.start()

    def take(self, output: int) -> List[ReservedFile]:
        """The files reserved for output `output`, now the caller's (paging in stops)."""
        self._stop.set()
        self._thread.join()
        taken, self._files[output] = self._files[output], []
        return taken

    def release(self) -> None:
        """Remove every file no writer adopted: those not taken, and those taken by a writer that
        was interrupted (a SIGTERM, Ctrl-C) before it renamed them into its folder."""
        self._stop.set()
        self._thread.join()
        for reserved in self._made:
            if os.path.lexists(reserved.path):  # an adopted file has left this name
                discard(reserved)
        self._files = [[] for _ in self._files]
        self._made = []

    def _page_in(self, budget: int) -> None:
        try:
            madvise = ctypes.CDLL(None, use_errno=True).madvise
            madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            for files in list(self._files):
                for reserved in files:
                    anchor = ctypes.c_char.from_buffer(reserved.map)
                    try:
                        start, size = ctypes.addressof(anchor), len(reserved.map)
                        for offset in range(0, size, STEP):
                            if self._stop.is_set() or budget <= 0:
                                return
                            length = min(STEP, size - offset)
                            if madvise(start + offset, length, MADV_POPULATE_WRITE) != 0:
                                return  # an older kernel: no harm, the writer faults pages in itself
                            budget -= length
                    finally:
                        del anchor  # the writer may resize the map only once nothing points into it
        except Exception as error:  # only a lost speed-up
            LOG.debug("paging in the reserved outputs stopped: %s", error)


def reserve(
    recipe: Union[Recipe, Path], outs: Sequence[Path], out_shard_size: int, budget: int
) -> Optional[Reservation]:
    """Reserve the output files `outs` will need, judged from the recipe's target; None if not here."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.peek(recipe)
    if recipe is None or not sys.platform.startswith("linux") or budget <= 0:
        return None
    try:
        sizes = predicted_shard_sizes(recipe, out_shard_size)
    except Exception as error:  # the recipe check reports bad recipes properly
        LOG.debug("no output reservation: %s", error)
        return None
    if not sizes:
        return None
    files: List[List[ReservedFile]] = []
    try:
        for out in outs:
            out = Path(out)
            if not out.parent.is_dir():
                files.append([])
                continue
            remove_leftovers(out.parent, out.name)  # what killed runs reserved here before
            made: List[ReservedFile] = []
            files.append(made)  # before the files are made: an interruption finds each one here
            for k, size in enumerate(sizes):
                made.append(_create(out.parent / f".{out.name}.reserved-{os.getpid()}-{k}", size))
    except BaseException as error:  # a SIGTERM or Ctrl-C while reserving leaves nothing either
        for made in files:
            for reserved in made:
                discard(reserved)
        if not isinstance(error, OSError):
            raise
        LOG.debug("no output reservation: %s", error)
        return None
    return Reservation(files, budget)


def predicted_shard_sizes(recipe: Union[Recipe, Path], out_shard_size: int) -> List[int]:
    """File sizes of the output's shards if it holds the target's tensors in the recipe's
    dtype, split as mergekit's writer splits them (in the target's stored order)."""
    data = (recipe if isinstance(recipe, Recipe) else Recipe.read(recipe)).data
    folder = Path(model_dir(data["base_model"]))
    dtype = data.get("out_dtype") or data.get("dtype")
    tensors: Dict[str, tuple] = {}
    for name in weight_files(folder):
        tensors.update(stored_tensors(folder / name))  # a header that does not fit its file raises
    sizes = [
        math.prod(shape) * (NAMED_BYTES[dtype] if dtype in NAMED_BYTES else ELEMENT_BYTES[stored])
        for stored, shape in tensors.values()
    ]
    head = 8 + 160 * len(tensors)  # about what a header takes per tensor; the writer sets the exact size
    return [sum(sizes[i] for i in shard) + head for shard in split_by_size(sizes, out_shard_size)]


def _create(path: Path, size: int) -> ReservedFile:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)  # no room: no reservation (the writer then says so)
        return ReservedFile(path, mmap.mmap(fd, size))
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def discard(reserved: ReservedFile) -> None:
    try:
        reserved.map.close()
    except BufferError:
        pass
    try:
        os.unlink(reserved.path)
    except FileNotFoundError:
        pass
