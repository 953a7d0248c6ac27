"""What isolation this host gives, found once by running a trivial program the real way,
and the policy that refuses weak isolation unless the caller opted into it."""

from __future__ import annotations

import functools
import os
import shutil
from typing import Optional

from mergekit_reasoning.bench.sandbox.cgroup import CgroupUnavailable, ProgramCgroup
from mergekit_reasoning.bench.sandbox.checker import Outcome, run_checked
from mergekit_reasoning.bench.sandbox.launch import Isolation, python, world_reachable
from mergekit_reasoning.core.errors import BenchError


class SandboxUnavailable(BenchError):
    """Full isolation is missing here and weaker isolation was not opted into."""


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
def isolation() -> Isolation:
    """Probe once what this host allows, by running a trivial program the real way."""
    missing = []
    root = os.geteuid() == 0
    try:
        cgroup: Optional[str] = cgroup_kind()
    except CgroupUnavailable as exc:
        cgroup = None
        missing.append(f"aggregate memory and process limits ({exc})")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        missing.insert(0, "bubblewrap (install the `bubblewrap` package, e.g. apt-get install bubblewrap)")
    else:
        probe = Isolation(bwrap, cgroup, root, ())
        out = run_checked(PROBE, probe, timeout=20, memory_mb=256, max_procs=16, max_file_mb=1)
        if not out.passed:
            why = ((out.stderr + out.report).strip().splitlines() or [out.status])[-1]
            missing.insert(0, f"working bubblewrap namespaces ({why})")
            bwrap = None
    # Without bubblewrap to stage the interpreter, a private uid works only where it can reach it.
    private_uid = root and (bwrap is not None or world_reachable(python()[0]))
    return Isolation(bwrap, cgroup, private_uid, tuple(missing))


# A trivial HumanEval-like problem, run the real way to see whether sandboxes work here.
PROBE = ("def one():\n    return 1\n", "def one():\n    pass\n", "def check(f):\n    assert f() == 1\n", "one")


def cgroup_kind() -> str:
    group = ProgramCgroup.create(64 * 2**20, 8)
    try:
        return group.describe()
    finally:
        group.remove()


def check_program(
    program: str,
    prompt: str,
    test: str,
    entry_point: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    max_file_mb: int = 16,
) -> Outcome:
    """Score one HumanEval program: `prompt`, `test` and `entry_point` are the dataset's (trusted),
    `program` is prompt + completion (untrusted). The limits are the program's; `timeout` covers
    the whole scoring.

    Raises `SandboxUnavailable` only for this host's set-up (see `require_isolation`);
    never for anything the program does.
    """
    iso = require_isolation()
    return run_checked(
        (program, prompt, test, entry_point),
        iso,
        timeout=timeout,
        memory_mb=memory_mb,
        max_procs=max_procs,
        max_file_mb=max_file_mb,
    )
