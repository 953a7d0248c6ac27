"""Run untrusted generated code (HumanEval completions) so it cannot hurt the run or host.

Each program runs in a fresh throw-away folder as its own session (process group),
under resource limits (address space, CPU seconds, processes, file size), and is
killed with its whole group on timeout. Where `unshare` works it also gets an
empty network namespace (no network at all, loopback down) and a PID namespace,
so every process it spawned dies with it; run as root it drops to `nobody`, which
makes the process limit bite and leaves it unable to write outside its folder.
Without `unshare` a preamble disables sockets: weaker, and reported as such.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

NOBODY = 65534

# Sets limits, then execs the real command: avoids preexec_fn, which is unsafe with threads.
_LAUNCHER = (
    "import json,os,resource,sys\n"
    "for name, value in json.loads(sys.argv[1]).items():\n"
    "    resource.setrlimit(getattr(resource, name), (value, value))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

# Fallback network block when no network namespace is available.
_NO_SOCKET = (
    "import socket as _s\n"
    "def _blocked(*a, **k):\n"
    "    raise OSError('network disabled in sandbox')\n"
    "_s.socket = _s.create_connection = _s.socketpair = _blocked\n"
    "del _s, _blocked\n"
)


@dataclass(frozen=True)
class Outcome:
    """What happened to one program: `passed` only if it exited 0 within its limits."""

    passed: bool
    status: str  # passed | failed | timeout
    returncode: Optional[int]
    seconds: float
    stderr: str


def _works(cmd: List[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=None)
def isolation() -> str:
    """The strongest isolation this host allows: 'nobody', 'namespaces' or 'rlimits'."""
    unshare = shutil.which("unshare")
    ns = ["--net", "--pid", "--fork", "--kill-child"]
    if unshare and os.geteuid() == 0 and shutil.which("setpriv"):
        if _works([unshare, *ns, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "true"]):
            return "nobody"
    if unshare and _works([unshare, "--user", "--map-root-user", *ns, "true"]):
        return "namespaces"
    return "rlimits"


def _command(program: Path, mode: str) -> List[str]:
    python = [sys.executable, "-I", str(program)]
    # A shell as PID 1 of the new namespace keeps the program at PID 2, where signals
    # follow the ordinary rules; when the shell exits the kernel kills whatever is left.
    init = ["/bin/sh", "-c", '"$0" "$@"; exit $?']
    ns = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if mode == "nobody":
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return [*ns, *init, *drop, *python]
    if mode == "namespaces":
        return [ns[0], "--user", "--map-root-user", *ns[1:], *init, *python]
    return python


def run_program(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    max_file_mb: int = 16,
) -> Outcome:
    """Execute `code` with `python -I` in a sandbox; never raises for what the code does."""
    mode = isolation()
    workdir = Path(tempfile.mkdtemp(prefix="mkr-sandbox-"))
    try:
        program = workdir / "program.py"
        program.write_text((_NO_SOCKET if mode == "rlimits" else "") + code)
        if mode == "nobody":
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(program, NOBODY, NOBODY)
        limits = {
            "RLIMIT_AS": memory_mb * 2**20,
            "RLIMIT_CPU": int(timeout) + 1,
            "RLIMIT_FSIZE": max_file_mb * 2**20,
            "RLIMIT_CORE": 0,
        }
        if mode != "rlimits" or os.geteuid() != 0:
            limits["RLIMIT_NPROC"] = max_procs  # root ignores it, so only set where it bites
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        cmd = [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(limits), *_command(program, mode)]
        start = time.monotonic()
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,
            )
            try:
                returncode: Optional[int] = proc.wait(timeout=timeout)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                returncode, status = None, "timeout"
            finally:
                _kill_group(proc)
        seconds = time.monotonic() - start
        stderr = (workdir / "stderr").read_bytes()[-2000:].decode("utf-8", "replace")
        return Outcome(status == "passed", status, returncode, seconds, stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def check_program(completion: str, test: str, **limits) -> Outcome:
    """Run a HumanEval program (prompt + completion) followed by its test harness."""
    return run_program(completion + "\n\n" + test + "\n", **limits)
