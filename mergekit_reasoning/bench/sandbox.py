"""Score untrusted generated code (HumanEval completions) so it cannot fool the score or hurt the host.

Each scoring runs two processes, each in a sandbox of its own, joined only by two pipes:
- the program (prompt + completion), which runs its code and then answers calls
  to its entry point (`sandbox_rpc.serve`);
- the trusted checker, which runs the dataset's own prompt and test with the entry
  point bound to a stand-in that forwards each call over the pipes, and alone
  decides the verdict (`sandbox_rpc.check`). Values come back as plain data,
  decoded by a strict literal reader, so all a program can affect is the values it
  returns: exit codes, output, exceptions, hangs, tampering with its own
  interpreter or writing to any fd it holds cannot make a pass.

Full isolation, the default and the only mode used without an explicit opt-in:
- bubblewrap gives each process its own user, PID, network, IPC, UTS and mount
  namespaces; it sees only the Python it needs (read-only) and private
  size-limited tmpfs folders (/tmp, /var/tmp, /dev/shm and its work folder), so it
  cannot read the answer key, the project or the home folder, and nothing it
  writes survives it;
- a cgroup of its own caps memory and process count for its whole tree;
- run as root, it gets a uid of its own from a private range, so no two processes
  share a uid or its process budget, and the program cannot signal the checker.

The harness reads only pipes it opened itself, capped and decoded with replacement,
under one overall deadline it enforces from outside by killing both trees; nothing a
program does makes scoring raise or hang.
"""

from __future__ import annotations

import functools
import marshal
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
from typing import List, Optional, Tuple

from mergekit_reasoning.bench import sandbox_rpc
from mergekit_reasoning.core.errors import BenchError
from mergekit_reasoning.bench.sandbox_cgroup import CgroupUnavailable, ProgramCgroup

# Private uids for programs when the harness is root (a range no distribution hands out).
UID_BASE = 0x70000000
UID_COUNT = 1 << 24
STAGE = "/tmp"  # a private tmpfs there, in the launcher's own mount namespace only
OUTPUT_CAP = 16 * 1024  # bytes kept of stdout and of stderr (the tail: tracebacks end there)
WORKDIR = "/sandbox"

# Runs first, outside the sandbox: joins the cgroups, sets rlimits, drops to the program's
# uid, then execs bubblewrap (or, in weak mode, the interpreter).
_LAUNCHER = r"""
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

# Runs in each sandbox: loads `sandbox_rpc` from the text sent with the job (the sandbox
# cannot see the project) and starts the job's role, `serve` or `check`, on the passed fds.
_BOOT = r"""
import marshal, sys
with open(int(sys.argv[1]), "rb") as f:
    job = marshal.loads(f.read())
rpc = {"__name__": "sandbox_rpc"}
exec(compile(job.pop("module"), "sandbox_rpc.py", "exec"), rpc)
rpc[job.pop("role")](*map(int, sys.argv[2:]), **job)
"""
_RPC_SOURCE = Path(sandbox_rpc.__file__).read_text(encoding="utf-8")

# The checker runs only the dataset's prompt and test: small fixed limits.
CHECKER_LIMITS = dict(memory_mb=256, max_procs=16, max_file_mb=1)
CHECKER_MARGIN = 0.3  # seconds: the checker gives up this much before the harness kills it


class SandboxUnavailable(BenchError):
    """Full isolation is missing here and weaker isolation was not opted into."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one program: `passed` only if the trusted checker's test ran to its end."""

    passed: bool
    status: str  # passed | failed | timeout
    seconds: float
    stderr: str  # the program's
    stdout: str = ""  # the program's
    report: str = ""  # the checker's account of a failure (the test's traceback, a channel fault)
    peak_memory: Optional[int] = None  # bytes, the program's whole process tree (None without a cgroup)
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
        out = _check(PROBE, probe, timeout=20, memory_mb=256, max_procs=16, max_file_mb=1)
        if not out.passed:
            why = ((out.stderr + out.report).strip().splitlines() or [out.status])[-1]
            missing.insert(0, f"working bubblewrap namespaces ({why})")
            bwrap = None
    # Without bubblewrap to stage the interpreter, a private uid works only where it can reach it.
    private_uid = root and (bwrap is not None or _world_reachable(_python()[0]))
    return Isolation(bwrap, cgroup, private_uid, tuple(missing))


# A trivial HumanEval-like problem, run the real way to see whether sandboxes work here.
PROBE = ("def one():\n    return 1\n", "def one():\n    pass\n", "def check(f):\n    assert f() == 1\n", "one")


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


def check_program(program: str, prompt: str, test: str, entry_point: str, *, timeout: float = 10.0,
                  memory_mb: int = 1024, max_procs: int = 64, max_file_mb: int = 16) -> Outcome:
    """Score one HumanEval program: `prompt`, `test` and `entry_point` are the dataset's (trusted),
    `program` is prompt + completion (untrusted). The limits are the program's; `timeout` covers
    the whole scoring.

    Raises `SandboxUnavailable` only for this host's set-up (see `require_isolation`);
    never for anything the program does.
    """
    iso = require_isolation()
    return _check((program, prompt, test, entry_point), iso, timeout=timeout, memory_mb=memory_mb,
                  max_procs=max_procs, max_file_mb=max_file_mb)


class _Sandboxed:
    """One process tree started under `iso` (launcher, bubblewrap, `_BOOT` running `job`), and its clean-up."""

    def __init__(self, iso: Isolation, job: dict, fds: Tuple[int, ...], *, timeout: float, memory_mb: int,
                 max_procs: int, max_file_mb: int, avoid_uid: Optional[int] = None):
        self.uid = self.group = self.workdir = self.proc = None
        try:
            self._start(iso, job, fds, timeout, memory_mb, max_procs, max_file_mb, avoid_uid)
        except BaseException:
            self.close()
            raise

    def _start(self, iso, job, fds, timeout, memory_mb, max_procs, max_file_mb, avoid_uid):
        if iso.private_uid:
            while self.uid in (None, avoid_uid):
                self.uid = UID_BASE + secrets.randbelow(UID_COUNT)
        if iso.cgroup:
            self.group = ProgramCgroup.create(memory_mb * 2**20, max_procs)
        if not iso.bwrap:
            self.workdir = tempfile.mkdtemp(prefix="mkr-sandbox-")
            if self.uid is not None:
                os.chown(self.workdir, self.uid, self.uid)
        with tempfile.TemporaryFile() as payload:
            payload.write(marshal.dumps({"module": _RPC_SOURCE, **job}))  # str, float: lone surrogates too
            payload.flush()
            payload.seek(0)
            limits = _rlimits(timeout, memory_mb, max_procs, max_file_mb, per_uid=self.uid is not None)
            argv, env = _command(iso, self.uid, self.group, self.workdir, limits, memory_mb, (payload.fileno(), *fds))
            self.proc = subprocess.Popen(
                argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(payload.fileno(), *fds), start_new_session=True,
            )

    def kill(self) -> None:
        """Kill the whole tree: its session, its cgroup and (weak mode) every process of its uid."""
        if self.proc is not None:
            _kill(self.proc, self.group, self.uid)

    def close(self) -> None:
        """Kill, then release what it held; never raises."""
        self.kill()
        if self.proc is not None:
            self.proc.stdout.close()
            self.proc.stderr.close()
        if self.group is not None:
            self.group.remove()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _check(problem: Tuple[str, str, str, str], iso: Isolation, *, timeout: float, memory_mb: int, max_procs: int,
           max_file_mb: int) -> Outcome:
    """Run the program and its checker side by side; every failure of ours or its is a failed Outcome."""
    program, prompt, test, entry_point = problem
    start = time.monotonic()
    deadline = start + timeout
    weak = "full" if iso.full else "weak"
    sides: List[_Sandboxed] = []
    ours: List[int] = []  # fds the harness must close
    try:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        ours += [request_r, request_w, reply_r, reply_w, verdict_r, verdict_w]
        served = _Sandboxed(iso, {"role": "serve", "program": program}, (request_r, reply_w), timeout=timeout,
                            memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb)
        sides.append(served)
        job = {"role": "check", "prompt": prompt, "test": test, "entry_point": entry_point,
               "seconds": max(0.1, deadline - time.monotonic() - CHECKER_MARGIN)}
        checker = _Sandboxed(iso, job, (request_w, reply_r, verdict_w), timeout=timeout, avoid_uid=served.uid,
                             **CHECKER_LIMITS)
        sides.append(checker)
        for fd in (request_r, reply_w, request_w, reply_r, verdict_w):  # theirs now: end-of-file can arrive
            os.close(fd)
            ours.remove(fd)
        pipes = {"verdict": verdict_r, "report": checker.proc.stderr.fileno(), "checker_out": checker.proc.stdout.fileno(),
                 "stdout": served.proc.stdout.fileno(), "stderr": served.proc.stderr.fileno()}
        kept = {name: bytearray() for name in pipes}
        finished = _read(pipes, kept, until_closed={"verdict", "report", "checker_out"}, deadline=deadline)
        checker_code = _exit_code(checker.proc, deadline) if finished else None
        for side in sides:
            side.kill()
        _read(pipes, kept, until_closed=set(pipes), deadline=time.monotonic() + 1.0)  # what the program left
        verdict = bytes(kept["verdict"])
        passed = finished and checker_code == 0 and verdict == b"pass"
        status = "passed" if passed else "timeout" if not finished or verdict == b"timeout" else "failed"
        report = _text(kept["report"]) or ("" if finished else "the harness's deadline passed\n")
        peak = served.group.peak_memory() if served.group else None
        return Outcome(passed, status, time.monotonic() - start, _text(kept["stderr"]), _text(kept["stdout"]),
                       report, peak, weak)
    except Exception as exc:  # the harness's own resources (fds, cgroup): a failed run, not a crash
        return Outcome(False, "failed", time.monotonic() - start, "", "", f"sandbox error: {exc}", None, weak)
    finally:
        for side in sides:
            side.close()
        for fd in ours:
            try:
                os.close(fd)
            except OSError:
                pass


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
             limits: dict, memory_mb: int, fds: Tuple[int, ...]) -> Tuple[List[str], dict]:
    """The launcher's argv (launcher, then bwrap if any, then `_BOOT` with the payload fd first) and environment."""
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
    inner += ["-I", "-S", "-c", _BOOT, *map(str, fds)]
    cfg = {"cgroups": group.join_files if group else [], "rlimits": limits, "uid": uid, "workdir": workdir,
           "stage": stage}
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    return [exe, "-I", "-S", "-c", _LAUNCHER, marshal.dumps(cfg).hex(), *inner], env


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _read(pipes: dict, kept: dict, until_closed: set, deadline: float) -> bool:
    """Read `pipes` (name -> fd) into `kept`, capped to each one's tail, until every pipe named in
    `until_closed` reached end-of-file (True) or the deadline passed (False). Closed pipes leave `pipes`.
    """
    sel = selectors.DefaultSelector()
    for name, fd in pipes.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    try:
        while until_closed & set(pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in sel.select(timeout=min(0.5, left)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    del pipes[key.data]
                    continue
                buf = kept[key.data]
                buf += chunk
                if len(buf) > OUTPUT_CAP:
                    del buf[: len(buf) - OUTPUT_CAP]
        return True
    finally:
        sel.close()


def _exit_code(proc: subprocess.Popen, deadline: float) -> Optional[int]:
    """The exit status of a process whose pipes all closed (so it is ending), or None at the deadline."""
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _kill(proc: subprocess.Popen, group: Optional[ProgramCgroup], uid: Optional[int]) -> None:
    """Kill a whole tree: its session, its cgroup and (weak mode) every process of its uid."""
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
