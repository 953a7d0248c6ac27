"""Refuse an input that shrank under a running merge, before its mapped pages are touched.

mergekit reads safetensors through a memory map. If a file is truncated while
mapped (a download restarted into the same path, a disk cleaner, a user's `cp`
over it), reading a page past the new end raises SIGBUS, which kills the process
with no message: Python cannot turn a fault inside a C memory copy into an
exception. So before each output tensor's inputs are loaded, every file they come
from is checked (one `fstat` each) to still reach the end of the tensor it is about
to give; a file that does not is one line naming it. A truncation in the instant
between that check and the copy is not caught.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.core.formats import byte_ranges


class InputSizes:
    """For each output tensor, the (file, last byte) pairs its loads read, checked on demand."""

    def __init__(self, planned: Dict[str, Iterable[Tuple[Path, str]]]):
        ends: Dict[Path, Dict[str, int]] = {}
        self._needs: Dict[str, List[Tuple[Path, int]]] = {}
        for output, reads in planned.items():
            needs = []
            for path, name in reads:
                if path.suffix != ".safetensors":
                    continue  # pickled weights are read whole by torch, not mapped
                if path not in ends:
                    ranges, where = byte_ranges(path)
                    ends[path] = {stored: ranges[index][1] for stored, index in where.items()}
                end = ends[path].get(name)
                if end is not None:
                    needs.append((path, end))
            self._needs[output] = needs

    def check(self, output: str) -> None:
        """Raise if a file `output`'s inputs come from no longer holds the bytes it needs."""
        for path, end in self._needs.get(output, ()):
            try:
                size = os.stat(path).st_size
            except OSError as error:
                raise RecipeError(f"input file {path} disappeared during the merge ({error.strerror})") from None
            if size < end:
                raise RecipeError(
                    f"input file {path} was truncated during the merge: {size} bytes, "
                    f"its header needs {end}; nothing was written"
                )
