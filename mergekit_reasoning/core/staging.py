"""Output folders that appear complete or not at all, and never over an input.

Merges, extractions and densifications all write into a hidden sibling folder
and rename it into place only once everything is in it; a failure leaves the
previous output (if any) untouched and no half-written folder behind. The
hidden names carry the writer's process id, so the leftovers of a process that
was killed can be told from those of one still running, and removed
(`remove_leftovers`, run before each write and by `mergekit-reasoning clean`).
The final rename refuses to replace a folder another process put in place
meanwhile, and an output that is, holds or lies inside an input is refused
before anything is read.
"""

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

from mergekit_reasoning.core.errors import RecipeError

NAME_MAX = 255  # bytes in one file name, on the file systems Linux and macOS use
# The hidden names writers use beside an output: .<name>.partial-<pid>-<random>,
# .<name>.reserved-<pid>-<k>, .<name>.old-<pid>.
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|reserved|old)-(?P<pid>\d+)(?:-[^/]*)?$")
_LONGEST_SUFFIX = len(".partial-4194304-xxxxxxxx")  # pid up to 2^22, mkdtemp's 8 characters


def refuse_non_empty(out: Path, overwrite: bool) -> None:
    out = Path(out)
    if out.is_file():
        raise RecipeError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RecipeError(f"output folder {out} is not empty (pass --overwrite to replace it)")


def refuse_output_over_inputs(out: Path, inputs: Iterable[Path]) -> None:
    """An output that is, contains, or lies inside an input folder (links resolved) would
    replace what it reads: refuse it, naming both."""
    target = Path(os.path.realpath(out))
    for folder in inputs:
        folder = Path(folder)
        if not folder.exists():
            continue
        source = Path(os.path.realpath(folder))
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            relation = "is" if target == source else "holds" if source.is_relative_to(target) else "lies inside"
            raise RecipeError(
                f"output {out} {relation} the input {folder}: choose an output folder apart from every input"
            )


def check_output_name(out: Path) -> None:
    """Names the file system would refuse, and parents that are files, as one line each."""
    out = Path(out)
    if len(os.fsencode(out.name)) + 1 + _LONGEST_SUFFIX > NAME_MAX:
        raise RecipeError(
            f"output name {out.name[:40]}... is too long: keep it under {NAME_MAX - 1 - _LONGEST_SUFFIX} bytes"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RecipeError(f"cannot create {out}: {parent} is a file")
            break


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def leftovers(folder: Path, name: Optional[str] = None) -> List[Tuple[Path, str]]:
    """(path, kind) of the hidden files and folders dead writers left in `folder`
    (for output `name` only, when given)."""
    found = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for entry in entries:
        match = LEFTOVER.match(entry.name)
        if match and (name is None or match["name"] == name) and not alive(int(match["pid"])):
            found.append((entry, match["kind"]))
    return sorted(found)


def remove_leftovers(folder: Path, name: Optional[str] = None) -> List[Path]:
    """Remove what dead writers left; a previous output a killed run had set aside while
    replacing it (`.old-`) is put back when nothing replaced it. Returns what was removed."""
    removed = []
    for path, kind in leftovers(folder, name):
        out = path.with_name(LEFTOVER.match(path.name)["name"])
        if kind == "old" and not out.exists():
            path.rename(out)  # the interrupted swap's previous output, back in place
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _writing_error(out: Path, error: OSError) -> RecipeError:
    return RecipeError(f"cannot write {out}: {error.strerror or error}")


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR)


@contextmanager
def staged(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside `out`; on success it replaces `out`."""
    out = Path(out)
    check_output_name(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out.parent, out.name)
    except OSError as error:
        raise _writing_error(out, error) from None
    refuse_non_empty(out, overwrite)
    before = _identity(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    except OSError as error:
        raise _writing_error(out, error) from None
    _as_umask_allows(staging)
    try:
        yield staging
        _move_into_place(staging, out, before)
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise _writing_error(out, error) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _as_umask_allows(folder: Path) -> None:
    """mkdtemp makes folders 0700; an output folder gets the mode `mkdir` would give it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def _move_into_place(staging: Path, out: Path, before: Optional[Tuple[int, int]]) -> None:
    """Swap the new folder in, unless another process put something at `out` meanwhile
    (then this result is dropped, with one line). The old folder is set aside first
    and removed after."""
    if _identity(out) != before:
        raise RecipeError(f"{out} was written by another process while this one ran; this result was not kept")
    if before is not None:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        try:
            staging.rename(out)
        except OSError:
            old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        staging.rename(out)  # a folder someone made meanwhile: refused unless empty
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            raise RecipeError(
                f"{out} was written by another process while this one ran; this result was not kept"
            ) from None
        raise
