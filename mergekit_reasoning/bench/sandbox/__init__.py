"""Score untrusted generated code (HumanEval completions) so it cannot fool the score or hurt the host.

Each scoring runs two processes, each in a sandbox of its own, joined only by two pipes:
- the program (prompt + completion), which runs its code and then answers calls
  to its entry point (`rpc.serve`);
- the trusted checker, which runs the dataset's own prompt and test with the entry
  point bound to a stand-in that forwards each call over the pipes, and alone
  decides the verdict (`rpc.check`). Values come back as plain data, decoded by a
  strict literal reader, so all a program can affect is the values it returns:
  exit codes, output, exceptions, hangs, tampering with its own interpreter or
  writing to any fd it holds cannot make a pass.

Full isolation, the default and the only mode used without an explicit opt-in:
- bubblewrap gives each process its own user, PID, network, IPC, UTS and mount
  namespaces; it sees only the Python it needs (read-only) and private
  size-limited tmpfs folders (/tmp, /var/tmp, /dev/shm and its work folder), so it
  cannot read the answer key, the project or the home folder, and nothing it
  writes survives it;
- a cgroup of its own caps memory and process count for its whole tree (`cgroup`);
- run as root, it gets a uid of its own from a private range, so no two processes
  share a uid or its process budget, and the program cannot signal the checker.

The harness reads only pipes it opened itself, capped and decoded with replacement,
under one overall deadline it enforces from outside by killing both trees; nothing a
program does makes scoring raise or hang.

One job a module: `probe` (what this host gives, and the opt-in policy), `launch`
(the launcher and bubblewrap's command), `processes` (a process tree and its
clean-up), `pipes` (reading them), `checker` (program and checker side by side),
`rpc` (the code that runs inside), `cgroup` (the limits of a tree).
"""

from mergekit_reasoning.bench.sandbox.checker import Outcome
from mergekit_reasoning.bench.sandbox.launch import Isolation
from mergekit_reasoning.bench.sandbox.probe import (
    SandboxUnavailable,
    allow_weak_isolation,
    check_program,
    declare,
    isolation,
    require_isolation,
)

__all__ = [
    "Isolation",
    "Outcome",
    "SandboxUnavailable",
    "allow_weak_isolation",
    "check_program",
    "declare",
    "isolation",
    "require_isolation",
]
