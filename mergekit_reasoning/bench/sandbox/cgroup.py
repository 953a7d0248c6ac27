"""One cgroup per sandboxed program: aggregate memory and process limits for its whole tree.

Per-process rlimits let eight forks of 900 MB run under a "1 GB" limit; a cgroup
counts the whole tree, including tmpfs and memfd pages it fills. cgroup v2 is used
where the unified hierarchy has the memory and pids controllers (the usual case:
`/sys/fs/cgroup/mkr-sandbox` as root, or a delegated folder named by
`MKR_SANDBOX_CGROUP`); otherwise cgroup v1's `memory` and `pids` hierarchies,
under the caller's own group. Each program gets its own group, so concurrent
scorings never share a budget.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path("/sys/fs/cgroup")
V2_DEFAULT_PARENT = ROOT / "mkr-sandbox"


class CgroupUnavailable(OSError):
    """No writable cgroup with memory and pids limits here."""


def _own_path(controller: str) -> Optional[str]:
    """This process's group in a v1 hierarchy ('' key for v2), from /proc/self/cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2_parent() -> Optional[Path]:
    """A v2 folder whose children get memory and pids controllers, or None."""
    if not (ROOT / "cgroup.controllers").is_file():
        return None  # not a pure v2 host (v1 or hybrid)
    parent = Path(os.environ.get("MKR_SANDBOX_CGROUP") or V2_DEFAULT_PARENT)
    try:
        parent.mkdir(exist_ok=True)
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            if parent.parent != parent:
                try:
                    _write(parent.parent / "cgroup.subtree_control", "+memory +pids")
                except OSError:
                    pass
            _write(parent / "cgroup.subtree_control", "+memory +pids")
        return parent
    except OSError:
        return None


def _v1_parents() -> Optional[List[Path]]:
    """The caller's own groups in the v1 memory and pids hierarchies, if both are writable."""
    parents = []
    for controller in ("memory", "pids"):
        own = _own_path(controller)
        base = ROOT / controller
        if own is None or not base.is_dir():
            return None
        parent = base / own.lstrip("/")
        if not os.access(parent, os.W_OK):
            return None
        parents.append(parent)
    return parents


def _remove_stale(parent: Path) -> None:
    """Empty groups left by a harness that was killed (its pid is in the name and is gone)."""
    try:
        names = [p.name for p in parent.iterdir() if p.name.startswith("mkr-sandbox-")]
    except OSError:
        return
    for name in names:
        pid = name.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                (parent / name).rmdir()
            except OSError:
                pass  # still busy, or someone else's: leave it


class ProgramCgroup:
    """The cgroup(s) one program runs in; `join_files` are written with the launcher's pid."""

    def __init__(self, version: int, dirs: List[Path]):
        self.version = version
        self.dirs = dirs

    @classmethod
    def create(cls, memory_bytes: int, max_procs: int) -> "ProgramCgroup":
        name = f"mkr-sandbox-{os.getpid()}-{secrets.token_hex(6)}"
        parent = _v2_parent()
        for folder in [parent] if parent is not None else (_v1_parents() or []):
            _remove_stale(folder)
        if parent is not None:
            group = cls(2, [parent / name])
            try:
                group.dirs[0].mkdir()
                d = group.dirs[0]
                _write(d / "memory.max", str(memory_bytes))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
                _write(d / "pids.max", str(max_procs))
                return group
            except OSError as exc:
                group.remove()
                raise CgroupUnavailable(f"cgroup v2 at {parent}: {exc.strerror or exc}") from None
        parents = _v1_parents()
        if parents is None:
            raise CgroupUnavailable("no writable cgroup (v2 with memory+pids, or v1 memory and pids)")
        group = cls(1, [p / name for p in parents])
        try:
            for d in group.dirs:
                d.mkdir()
            mem, pids = group.dirs
            _write(mem / "memory.limit_in_bytes", str(memory_bytes))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
            _write(pids / "pids.max", str(max_procs))
            return group
        except OSError as exc:
            group.remove()
            raise CgroupUnavailable(f"cgroup v1: {exc.strerror or exc}") from None

    @property
    def join_files(self) -> List[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def describe(self) -> str:
        return "cgroup v2 memory+pids" if self.version == 2 else "cgroup v1 memory+pids"

    def peak_memory(self) -> Optional[int]:
        """Highest memory use of the whole tree, in bytes (None where the kernel does not say)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.dirs[0] / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> List[int]:
        found = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def kill_all(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process in the group until it is empty; bounded poll. True if emptied."""
        kill_file = self.dirs[0] / "cgroup.kill"
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            pids = self.pids()
            if not pids:
                return True
            if self.version == 2 and kill_file.exists():
                try:
                    _write(kill_file, "1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left and remove the group(s); never raises."""
        self.kill_all(timeout)
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)  # a killed task still leaving the group
