"""Run untrusted generated code (HumanEval completions) so it cannot fool the score or hurt the host.

Full isolation, the default and the only mode used without an explicit opt-in:
- bubblewrap gives each program its own user, PID, network, IPC, UTS and mount
  namespaces; the program sees only the Python it needs (read-only) and private
  size-limited tmpfs folders (/tmp, /var/tmp, /dev/shm and its work folder), so it
  cannot read the answer key, the project or the home folder, and nothing it
  writes survives it;
- a cgroup of its own caps memory and process count for its whole tree;
- run as root, it gets a uid of its own from a private range, so no two programs
  share a uid or its process budget.

The verdict is a per-run random token that the trusted prelude reads before any
program code runs, keeps in an audit hook's closure, and writes to a pipe only
after every part of the program (completion, then test) ran to its end; a pass
needs that token and a zero exit. Exit calls, `atexit`, `sys.excepthook` and
printed text therefore cannot claim a pass. The
harness reads only pipes it opened itself, capped and decoded with replacement,
under one overall deadline it enforces from outside; nothing a program does
makes scoring raise or hang.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from .errors import BenchError
from .sandbox_cgroup import CgroupUnavailable, ProgramCgroup

# Private uids for programs when the harness is root (a range no distribution hands out).
UID_BASE = 0x70000000
UID_COUNT = 1 << 24
STAGE = "/tmp"  # a private tmpfs there, in the launcher's own mount namespace only
OUTPUT_CAP = 16 * 1024  # bytes kept of stdout and of stderr (the tail: tracebacks end there)
WORKDIR = "/sandbox"

# Runs first, outside the sandbox: joins the cgroups, sets rlimits, drops to the program's
# uid, then execs bubblewrap (or, in weak mode, the interpreter).
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
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

# The program's own process. The token is read before any program code runs and kept only
# in an audit hook's closure; the hook writes it when `_run`'s own frame reports that every
# part ran to its end, and blocks the usual ways to reach it (gc walks, ctypes, tracing).
# Everything `_run` calls after the program starts is bound beforehand, so a program that
# replaces builtins or os functions cannot skip the test or turn a failure into a pass.
_PRELUDE = r"""
import json, os, sys
def _guard(token, ver_fd, caller, pid, getframe=sys._getframe, getpid=os.getpid, write=os.write):
    blocked = {"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
               "sys._current_frames", "sys.addaudithook", "code.__new__", "subprocess.Popen", "os.exec",
               "os.posix_spawn", "os.spawn", "os.system"}
    def hook(event, args):
        if event == "mkr.sandbox.done":
            if getframe(1) is caller and getpid() == pid:
                write(ver_fd, token)
        elif event in blocked or event.startswith("ctypes."):
            raise PermissionError(f"{event} is not allowed in the sandbox")
    sys.addaudithook(hook)
def _run(src_fd, tok_fd, ver_fd):
    lo = 3
    for fd in sorted({src_fd, tok_fd, ver_fd}):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)
    with open(src_fd, "rb") as f:
        sources = json.loads(f.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["program.py"]
    import builtins, traceback
    builtins.exit = builtins.quit = sys.exit  # as in a normal interpreter (-S leaves them out)
    run, build, audit, exit_now, print_exc = exec, compile, sys.audit, os._exit, traceback.print_exc
    _guard(os.read(tok_fd, 64), ver_fd, sys._getframe(), os.getpid())
    os.close(tok_fd)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    finished = False
    try:
        for name, source in zip(("<program>", "<test>", "<more>"), sources):
            run(build(source, name, "exec"), namespace)
        finished = True
    except BaseException:
        try:
            print_exc()
        except BaseException:
            pass
    if finished:
        audit("mkr.sandbox.done")
        try:
            sys.stdout.flush()
        except BaseException:
            pass
    exit_now(0 if finished else 1)
_run(*map(int, sys.argv[1:4]))
"""


class SandboxUnavailable(BenchError):
    """Full isolation is missing here and weaker isolation was not opted into."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one program: `passed` only with the run's token and a zero exit."""

    passed: bool
    status: str  # passed | failed | timeout
    returncode: Optional[int]
    seconds: float
    stderr: str
    stdout: str = ""
    peak_memory: Optional[int] = None  # bytes, whole process tree (None without a cgroup)
    isolation: str = ""


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
            parts.append(f"bubblewrap {_bwrap_version(self.bwrap)} (user, PID, network, IPC, mount namespaces; "
                         "private size-limited tmpfs; host files hidden)")
        else:
            parts.append("no namespaces (rlimits and a throw-away folder only)")
        parts.append(self.cgroup or "per-process rlimits only" + ("" if self.private_uid else ", no process-count limit"))
        if self.private_uid:
            parts.append("a private uid per program")
        else:
            parts.append("the caller's uid inside a user namespace" if self.bwrap else f"the caller's uid ({os.geteuid()})")
        head = "full" if self.full else "WEAK, missing " + "; ".join(self.missing)
        return f"{head}: " + ", ".join(parts)


_allow_weak = False


def allow_weak_isolation(allow: bool = True) -> None:
    """Opt in (or back out) to scoring when full isolation is missing; recorded by the caller."""
    global _allow_weak
    _allow_weak = bool(allow)


def require_isolation(allow_weak: Optional[bool] = None) -> Isolation:
    """The isolation programs will run under; one clear error if it is not full and not opted into."""
    iso = isolation()
    if iso.full or (_allow_weak if allow_weak is None else allow_weak):
        return iso
    raise SandboxUnavailable(
        "HumanEval programs need full sandbox isolation, and this machine lacks "
        + "; ".join(iso.missing)
        + ". Fix that, or pass --allow-weak-sandbox (run_bench(..., allow_weak_sandbox=True)) to score "
        "with weaker isolation, recorded in the results"
    )


def declare(allow_weak: bool = False) -> str:
    """For a scoring run: set the opt-in, check it, and return the line that records the isolation."""
    allow_weak_isolation(allow_weak)
    return require_isolation(allow_weak).describe()


@functools.lru_cache(maxsize=None)
def _bwrap_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


@functools.lru_cache(maxsize=None)
def isolation() -> Isolation:
    """Probe once what this host allows, by running a trivial program the real way."""
    missing = []
    root = os.geteuid() == 0
    try:
        cgroup: Optional[str] = _cgroup_kind()
    except CgroupUnavailable as exc:
        cgroup = None
        missing.append(f"aggregate memory and process limits ({exc})")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        missing.insert(0, "bubblewrap (install the `bubblewrap` package, e.g. apt-get install bubblewrap)")
    else:
        probe = Isolation(bwrap, cgroup, root, ())
        out = _execute(["pass"], probe, timeout=20, memory_mb=256, max_procs=16, max_file_mb=1)
        if not out.passed:
            why = (out.stderr.strip().splitlines() or [out.status])[-1]
            missing.insert(0, f"working bubblewrap namespaces ({why})")
            bwrap = None
    # Without bubblewrap to stage the interpreter, a private uid works only where it can reach it.
    private_uid = root and (bwrap is not None or _world_reachable(_python()[0]))
    return Isolation(bwrap, cgroup, private_uid, tuple(missing))


def _world_reachable(path: str) -> bool:
    """Whether any uid can walk to `path` and use it (it and every parent open to others)."""
    try:
        return all(os.stat(p).st_mode & 0o001 for p in (path, *Path(path).parents))
    except OSError:
        return False


def _cgroup_kind() -> str:
    group = ProgramCgroup.create(64 * 2**20, 8)
    try:
        return group.describe()
    finally:
        group.remove()


def _python() -> Tuple[str, List[str]]:
    """The base interpreter (not a venv's) and the folders it needs to run."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    folders = [os.path.realpath(sys.base_prefix)]
    if not any(exe.startswith(f.rstrip("/") + "/") for f in folders):
        folders.append(os.path.dirname(exe))
    return exe, folders


def _bind_folders() -> List[str]:
    """Host folders the program sees read-only: the interpreter's, and the system's libraries (/usr, /lib...)."""
    _, folders = _python()
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/usr"):
        if os.path.isdir(top) and not os.path.islink(top) and top not in folders:
            if not any(top.startswith(f.rstrip("/") + "/") for f in folders):
                folders.append(top)
    return folders


def _bwrap_command(bwrap: str, size_bytes: int, binds: dict) -> List[str]:
    """bubblewrap's arguments; `binds` maps each folder the program sees to where bwrap finds it."""
    exe, _ = _python()
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "sandbox"]
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


def run_program(
    code: Union[str, Sequence[str]],
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    max_file_mb: int = 16,
) -> Outcome:
    """Execute `code` (one source, or parts run in order in one namespace) in the sandbox.

    Raises `SandboxUnavailable` only for this host's set-up (see `require_isolation`);
    never for anything the code does.
    """
    iso = require_isolation()
    sources = [code] if isinstance(code, str) else list(code)
    return _execute(sources, iso, timeout=timeout, memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb)


def check_program(program: str, test: str, **limits) -> Outcome:
    """A HumanEval program (prompt + completion), then its test, as two separately compiled parts.

    Separate parts keep a completion from swallowing the test (an unclosed string, a
    trailing backslash): the test runs as written or the program fails.
    """
    return run_program([program, test], **limits)


def _execute(sources: List[str], iso: Isolation, *, timeout: float, memory_mb: int, max_procs: int,
             max_file_mb: int) -> Outcome:
    """Run one program under `iso`; every failure of ours or its is a failed Outcome, never an exception."""
    token = secrets.token_hex(16).encode()
    start = time.monotonic()
    uid = UID_BASE + secrets.randbelow(UID_COUNT) if iso.private_uid else None
    group: Optional[ProgramCgroup] = None
    workdir: Optional[str] = None
    proc: Optional[subprocess.Popen] = None
    ours: List[int] = []  # fds the harness must close
    src = tempfile.TemporaryFile()
    weak = "full" if iso.full else "weak"
    try:
        src.write(json.dumps(sources).encode("ascii"))  # ASCII escapes: lone surrogates cannot raise
        src.flush()
        src.seek(0)
        tok_r, tok_w = os.pipe()
        ver_r, ver_w = os.pipe()
        ours += [tok_r, tok_w, ver_r, ver_w]
        os.write(tok_w, token)  # 32 bytes: fits the pipe, never blocks
        if iso.cgroup:
            group = ProgramCgroup.create(memory_mb * 2**20, max_procs)
        if not iso.bwrap:
            workdir = tempfile.mkdtemp(prefix="mkr-sandbox-")
            if uid is not None:
                os.chown(workdir, uid, uid)
        limits = _rlimits(timeout, memory_mb, max_procs, max_file_mb, per_uid=uid is not None)
        argv, env = _command(iso, uid, group, workdir, limits, memory_mb, (src.fileno(), tok_r, ver_w))
        proc = subprocess.Popen(
            argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(src.fileno(), tok_r, ver_w), start_new_session=True,
        )
        src.close()
        streams, timed_out = _collect(
            proc, {"stdout": proc.stdout.fileno(), "stderr": proc.stderr.fileno(), "verdict": ver_r}, start + timeout,
            close_first=[tok_r, tok_w, ver_w], ours=ours,
        )
        _kill(proc, group, uid)
        if timed_out:
            status, returncode = "timeout", None
        else:
            returncode = proc.returncode
            status = "passed" if returncode == 0 and streams["verdict"] == token else "failed"
        peak = group.peak_memory() if group else None
        return Outcome(status == "passed", status, returncode, time.monotonic() - start,
                       _text(streams["stderr"]), _text(streams["stdout"]), peak, weak)
    except Exception as exc:  # the harness's own resources (fds, cgroup): a failed run, not a crash
        if proc is not None:
            _kill(proc, group, uid)
        return Outcome(False, "failed", None, time.monotonic() - start, f"sandbox error: {exc}", "", None, weak)
    finally:
        src.close()
        for fd in ours:
            try:
                os.close(fd)
            except OSError:
                pass
        if proc is not None:
            proc.stdout.close()
            proc.stderr.close()
        if group is not None:
            group.remove()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _rlimits(timeout: float, memory_mb: int, max_procs: int, max_file_mb: int, per_uid: bool) -> dict:
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


def _command(iso: Isolation, uid: Optional[int], group: Optional[ProgramCgroup], workdir: Optional[str],
             limits: dict, memory_mb: int, fds: Tuple[int, int, int]) -> Tuple[List[str], dict]:
    """The launcher's argv (launcher, then bwrap if any, then the prelude) and environment."""
    exe, _ = _python()
    stage: dict = {}
    if iso.bwrap:
        folders = _bind_folders()
        if uid is not None and not all(map(_world_reachable, folders)):
            # The program's uid cannot walk to them (a Python under /root): stage them.
            stage = {f"{STAGE}/{i}": folder for i, folder in enumerate(folders)}
        binds = {folder: staged for staged, folder in stage.items()} or {f: f for f in folders}
        inner = _bwrap_command(iso.bwrap, memory_mb * 2**20, binds)
        home, tmp = WORKDIR, "/tmp"
    else:
        inner = [exe]
        home = tmp = workdir
    inner += ["-I", "-S", "-c", _PRELUDE, *map(str, fds)]
    cfg = {"cgroups": group.join_files if group else [], "rlimits": limits, "uid": uid, "workdir": workdir,
           "stage": stage}
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    return [exe, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg), *inner], env


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _collect(proc: subprocess.Popen, pipes: dict, deadline: float, close_first: List[int],
             ours: List[int]) -> Tuple[dict, bool]:
    """Read every pipe until all close or the deadline passes; keep a capped tail of each.

    Returns what was read and whether the deadline passed with the program still running.
    `close_first` are the child's ends, closed here so that end-of-file can arrive.
    """
    for fd in close_first:
        os.close(fd)
        ours.remove(fd)
    kept = {name: bytearray() for name in pipes}
    sel = selectors.DefaultSelector()
    for name, fd in pipes.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    exited_at: Optional[float] = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 1.0:
                break  # the program is gone; whatever still holds a pipe is killed next
            for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = kept[key.data]
                buf += chunk
                if len(buf) > OUTPUT_CAP:
                    del buf[: len(buf) - OUTPUT_CAP]
    finally:
        sel.close()
    try:
        proc.wait(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        pass
    return {k: bytes(v) for k, v in kept.items()}, proc.poll() is None


def _kill(proc: subprocess.Popen, group: Optional[ProgramCgroup], uid: Optional[int]) -> None:
    """Kill the program's whole tree: its session, its cgroup and (weak mode) every process of its uid."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if group is not None:
        group.kill_all()
    elif uid is not None:
        _kill_uid(uid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _kill_uid(uid: int, timeout: float = 5.0) -> None:
    """SIGKILL every process of a private uid until none is left (bounded poll)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found = True
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
        if not found:
            return
        time.sleep(0.02)
