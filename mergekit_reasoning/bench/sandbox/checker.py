"""Run one program and its trusted checker side by side, joined only by pipes; the
checker alone decides the verdict, and every failure of ours or the program's is a
failed Outcome."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

from mergekit_reasoning.bench.sandbox.launch import Isolation
from mergekit_reasoning.bench.sandbox.pipes import read, text
from mergekit_reasoning.bench.sandbox.processes import Sandboxed, exit_code

# The checker runs only the dataset's prompt and test: small fixed limits.
CHECKER_LIMITS = dict(memory_mb=256, max_procs=16, max_file_mb=1)
CHECKER_MARGIN = 0.3  # seconds: the checker gives up this much before the harness kills it


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


def run_checked(
    problem: Tuple[str, str, str, str],
    iso: Isolation,
    *,
    timeout: float,
    memory_mb: int,
    max_procs: int,
    max_file_mb: int,
) -> Outcome:
    """Run the program and its checker side by side; every failure of ours or its is a failed Outcome."""
    program, prompt, test, entry_point = problem
    start = time.monotonic()
    deadline = start + timeout
    weak = "full" if iso.full else "weak"
    sides: List[Sandboxed] = []
    ours: List[int] = []  # fds the harness must close
    try:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        ours += [request_r, request_w, reply_r, reply_w, verdict_r, verdict_w]
        served = Sandboxed(
            iso,
            {"role": "serve", "program": program},
            (request_r, reply_w),
            timeout=timeout,
            memory_mb=memory_mb,
            max_procs=max_procs,
            max_file_mb=max_file_mb,
        )
        sides.append(served)
        job = {
            "role": "check",
            "prompt": prompt,
            "test": test,
            "entry_point": entry_point,
            "seconds": max(0.1, deadline - time.monotonic() - CHECKER_MARGIN),
        }
        checker = Sandboxed(
            iso, job, (request_w, reply_r, verdict_w), timeout=timeout, avoid_uid=served.uid, **CHECKER_LIMITS
        )
        sides.append(checker)
        for fd in (request_r, reply_w, request_w, reply_r, verdict_w):  # theirs now: end-of-file can arrive
            os.close(fd)
            ours.remove(fd)
        pipes = {
            "verdict": verdict_r,
            "report": checker.proc.stderr.fileno(),
            "checker_out": checker.proc.stdout.fileno(),
            "stdout": served.proc.stdout.fileno(),
            "stderr": served.proc.stderr.fileno(),
        }
        kept = {name: bytearray() for name in pipes}
        finished = read(pipes, kept, until_closed={"verdict", "report", "checker_out"}, deadline=deadline)
        checker_code = exit_code(checker.proc, deadline) if finished else None
        for side in sides:
            side.kill()
        read(pipes, kept, until_closed=set(pipes), deadline=time.monotonic() + 1.0)  # what the program left
        verdict = bytes(kept["verdict"])
        passed = finished and checker_code == 0 and verdict == b"pass"
        status = "passed" if passed else "timeout" if not finished or verdict == b"timeout" else "failed"
        report = text(kept["report"]) or ("" if finished else "the harness's deadline passed\n")
        peak = served.group.peak_memory() if served.group else None
        return Outcome(
            passed, status, time.monotonic() - start, text(kept["stderr"]), text(kept["stdout"]), report, peak, weak
        )
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
