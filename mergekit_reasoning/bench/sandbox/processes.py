"""One sandboxed process tree: started under the host's isolation, killed whole (its
session, its cgroup and, in weak mode, every process of its uid), and cleaned up."""

from __future__ import annotations

import marshal
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Optional, Tuple

from mergekit_reasoning.bench.sandbox.cgroup import ProgramCgroup
from mergekit_reasoning.bench.sandbox.launch import RPC_SOURCE, UID_BASE, UID_COUNT, Isolation, command, rlimits


class Sandboxed:
    """One process tree started under `iso` (launcher, bubblewrap, `BOOT` running `job`), and its clean-up."""

    def __init__(
        self,
        iso: Isolation,
        job: dict,
        fds: Tuple[int, ...],
        *,
        timeout: float,
        memory_mb: int,
        max_procs: int,
        max_file_mb: int,
        avoid_uid: Optional[int] = None,
    ):
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
            payload.write(marshal.dumps({"module": RPC_SOURCE, **job}))  # str, float: lone surrogates too
            payload.flush()
            payload.seek(0)
            limits = rlimits(timeout, memory_mb, max_procs, max_file_mb, per_uid=self.uid is not None)
            argv, env = command(iso, self.uid, self.group, self.workdir, limits, memory_mb, (payload.fileno(), *fds))
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(payload.fileno(), *fds),
                start_new_session=True,
            )

    def kill(self) -> None:
        """Kill the whole tree: its session, its cgroup and (weak mode) every process of its uid."""
        if self.proc is not None:
            kill(self.proc, self.group, self.uid)

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


def exit_code(proc: subprocess.Popen, deadline: float) -> Optional[int]:
    """The exit status of a process whose pipes all closed (so it is ending), or None at the deadline."""
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def kill(proc: subprocess.Popen, group: Optional[ProgramCgroup], uid: Optional[int]) -> None:
    """Kill a whole tree: its session, its cgroup and (weak mode) every process of its uid."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if group is not None:
        group.kill_all()
    elif uid is not None:
        kill_uid(uid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def kill_uid(uid: int, timeout: float = 5.0) -> None:
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
