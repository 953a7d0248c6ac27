"""How a sandboxed process is started: the host's isolation, the launcher, bubblewrap's
arguments, the interpreter and folders a program sees, and its resource limits."""

from __future__ import annotations

import functools
import marshal
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from mergekit_reasoning.bench.sandbox import rpc
from mergekit_reasoning.bench.sandbox.cgroup import ProgramCgroup

# Private uids for programs when the harness is root (a range no distribution hands out).
UID_BASE = 0x70000000
UID_COUNT = 1 << 24
STAGE = "/tmp"  # a private tmpfs there, in the launcher's own mount namespace only
WORKDIR = "/sandbox"

# Runs first, outside the sandbox: joins the cgroups, sets rlimits, drops to the program's
# uid, then execs bubblewrap (or, in weak mode, the interpreter).
LAUNCHER = r"""
import ctypes, marshal, os, resource, signal, sys
cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
for path in cfg["cgroups"]:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
if cfg["stage"]:
    # Root only, before dropping to the program's uid: in a mount namespace of our own (gone
    # when the program ends), bind the folders it needs where that uid can reach them.
    libc = ctypes.CDLL(None, use_errno=True)
    def check(rc):
        if rc != 0:
            raise OSError(ctypes.get_errno(), "sandbox staging mount failed")
    check(libc.unshare(0x00020000))  # CLONE_NEWNS
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None))  # MS_REC | MS_PRIVATE
    top = os.path.dirname(next(iter(cfg["stage"])))
    check(libc.mount(b"tmpfs", top.encode(), b"tmpfs", 0, b"mode=755,size=64k"))
    for staged, folder in cfg["stage"].items():
        os.mkdir(staged)
        check(libc.mount(folder.encode(), staged.encode(), None, 0x1000 | 0x4000, None))  # MS_BIND | MS_REC
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if cfg["uid"] is not None:
    os.setgroups([])
    os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
    os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the harness
if cfg["workdir"]:
    os.chdir(cfg["workdir"])
os.execv(sys.argv[2], sys.argv[2:])
"""

# Runs in each sandbox: loads `rpc` (as `sandbox_rpc`) from the text sent with the job (the sandbox
# cannot see the project) and starts the job's role, `serve` or `check`, on the passed fds.
BOOT = r"""
import marshal, sys
with open(int(sys.argv[1]), "rb") as f:
    job = marshal.loads(f.read())
rpc = {"__name__": "sandbox_rpc"}
exec(compile(job.pop("module"), "sandbox_rpc.py", "exec"), rpc)
rpc[job.pop("role")](*map(int, sys.argv[2:]), **job)
"""
RPC_SOURCE = Path(rpc.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Isolation:
    """What this host gives a program; `full` only if nothing in `missing`."""

    bwrap: Optional[str]  # path of a working bubblewrap, or None
    cgroup: Optional[str]  # "cgroup v1 memory+pids" / "cgroup v2 memory+pids", or None
    private_uid: bool  # root: each program gets a uid of its own
    missing: Tuple[str, ...]

    @property
    def full(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        parts = []
        if self.bwrap:
            parts.append(
                f"bubblewrap {bwrap_version(self.bwrap)} (user, PID, network, IPC, mount namespaces; "
                "private size-limited tmpfs; host files hidden)"
            )
        else:
            parts.append("no namespaces (rlimits and a throw-away folder only)")
        parts.append(
            self.cgroup or "per-process rlimits only" + ("" if self.private_uid else ", no process-count limit")
        )
        if self.private_uid:
            parts.append("a private uid per program")
        else:
            parts.append(
                "the caller's uid inside a user namespace" if self.bwrap else f"the caller's uid ({os.geteuid()})"
            )
        head = "full" if self.full else "WEAK, missing " + "; ".join(self.missing)
        return f"{head}: " + ", ".join(parts)


@functools.lru_cache(maxsize=None)
def bwrap_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def world_reachable(path: str) -> bool:
    """Whether any uid can walk to `path` and use it (it and every parent open to others)."""
    try:
        return all(os.stat(p).st_mode & 0o001 for p in (path, *Path(path).parents))
    except OSError:
        return False


def python() -> Tuple[str, List[str]]:
    """The base interpreter (not a venv's) and the folders it needs to run."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    folders = [os.path.realpath(sys.base_prefix)]
    if not any(exe.startswith(f.rstrip("/") + "/") for f in folders):
        folders.append(os.path.dirname(exe))
    return exe, folders


def bind_folders() -> List[str]:
    """Host folders the program sees read-only: the interpreter's, and the system's libraries (/usr, /lib...)."""
    _, folders = python()
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/usr"):
        if os.path.isdir(top) and not os.path.islink(top) and top not in folders:
            if not any(top.startswith(f.rstrip("/") + "/") for f in folders):
                folders.append(top)
    return folders


def bwrap_command(bwrap: str, size_bytes: int, binds: dict) -> List[str]:
    """bubblewrap's arguments; `binds` maps each folder the program sees to where bwrap finds it."""
    exe, _ = python()
    cmd = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "sandbox",
    ]
    for folder, source in binds.items():
        cmd += ["--ro-bind", source, folder]
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
    cmd += ["--dev", "/dev"]  # no /proc: nothing to read the interpreter's memory or fds through
    for tmp in ("/tmp", "/var/tmp", "/dev/shm", WORKDIR):
        cmd += ["--size", str(size_bytes), "--tmpfs", tmp]
    cmd += ["--chdir", WORKDIR, exe]
    return cmd


def rlimits(timeout: float, memory_mb: int, max_procs: int, max_file_mb: int, per_uid: bool) -> dict:
    limits = {
        "RLIMIT_AS": memory_mb * 2**20,
        "RLIMIT_CPU": int(timeout) + 1,
        "RLIMIT_FSIZE": max_file_mb * 2**20,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 256,
    }
    if per_uid:
        limits["RLIMIT_NPROC"] = max_procs  # counted per uid: only where the uid is the program's alone,
        # since the caller's own uid already runs its other processes
    return limits


def command(
    iso: Isolation,
    uid: Optional[int],
    group: Optional[ProgramCgroup],
    workdir: Optional[str],
    limits: dict,
    memory_mb: int,
    fds: Tuple[int, ...],
) -> Tuple[List[str], dict]:
    """The launcher's argv (launcher, then bwrap if any, then `BOOT` with the payload fd first) and environment."""
    exe, _ = python()
    stage: dict = {}
    if iso.bwrap:
        folders = bind_folders()
        if uid is not None and not all(map(world_reachable, folders)):
            # The program's uid cannot walk to them (a Python under /root): stage them.
            stage = {f"{STAGE}/{i}": folder for i, folder in enumerate(folders)}
        binds = {folder: staged for staged, folder in stage.items()} or {f: f for f in folders}
        inner = bwrap_command(iso.bwrap, memory_mb * 2**20, binds)
        home, tmp = WORKDIR, "/tmp"
    else:
        inner = [exe]
        home = tmp = workdir
    inner += ["-I", "-S", "-c", BOOT, *map(str, fds)]
    cfg = {
        "cgroups": group.join_files if group else [],
        "rlimits": limits,
        "uid": uid,
        "workdir": workdir,
        "stage": stage,
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    return [exe, "-I", "-S", "-c", LAUNCHER, marshal.dumps(cfg).hex(), *inner], env
