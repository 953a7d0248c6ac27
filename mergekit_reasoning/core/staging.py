"""Output folders that appear complete or not at all.

Merges, extractions and densifications all write into a hidden sibling folder
and rename it into place only once everything is in it; a failure leaves the
previous output (if any) untouched and no half-written folder behind.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mergekit_reasoning.core.errors import RecipeError


def refuse_non_empty(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RecipeError(f"output folder {out} is not empty (pass --overwrite to replace it)")


@contextmanager
def staged(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside `out`; on success it replaces `out`."""
    out = Path(out)
    refuse_non_empty(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out: Path) -> None:
    """Swap the new folder in; the old one is set aside first and removed after."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
