"""Hostile HumanEval completions: every trick scores 0, correct answers score 1, nothing survives.

Programs are scored the way lm-eval scores them (`mkr_hooks.pass_at_1`) or through
`check_program` where a test needs the outcome's details. Limits are kept small
(256 MB, 16 processes) so the bombs stay harmless to the host, and every check of
"what is left" looks only at this test process's own sandboxes: their cgroups are
named after its pid.
"""

import gzip
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mergekit_reasoning.bench.sandbox import check_program, isolation, run_program
from mergekit_reasoning.bench.tasks import mkr_hooks as hooks

pytestmark = pytest.mark.skipif(
    not isolation().full, reason=f"full sandbox isolation is missing here: {'; '.join(isolation().missing)}"
)

PROMPT = "def add(a, b):\n"
RIGHT = "    return a + b\n"
WRONG = "    return a - b\n"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)"
SMALL = dict(memory_mb=256, max_procs=16, timeout=10)
REPO = Path(__file__).resolve().parents[2]
HUMANEVAL = REPO / ".." / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def score(completion: str, test: str = TEST) -> float:
    return hooks.pass_at_1([test], [PROMPT + completion])


def own_sandbox_processes():
    """Processes in a cgroup of one of this test process's sandboxes (none once a run returns)."""
    mark = f"mkr-sandbox-{os.getpid()}-".encode()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cgroup", "rb") as f:
                    if mark in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def assert_nothing_left(timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while own_sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not own_sandbox_processes()


def within(out, mb: int) -> bool:
    """The tree's peak memory stayed under the limit (kernels before 5.19 do not report it on cgroup v2)."""
    return out.peak_memory is None or out.peak_memory <= mb * 2**20


def test_correct_and_wrong_programs():
    assert score(RIGHT) == 1.0
    out = check_program(PROMPT + WRONG, TEST)
    assert not out.passed and out.status == "failed" and "AssertionError" in out.stderr
    assert out.isolation == "full"


# A wrong answer plus a trick meant to claim a pass; each must score 0.
CLAIMS = {
    "exit": "exit()\n",
    "sys_exit_0": "import sys\nsys.exit(0)\n",
    "raise_systemexit_0": "raise SystemExit(0)\n",
    "os_exit_0": "import os\nos._exit(0)\n",
    "atexit_os_exit": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook_os_exit": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "fake_output": "print('PASSED 1.0')\nimport sys\nsys.stderr.write('ok\\n')\n",
    "junk_on_every_fd": "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n        pass\n",
    "swallow_test_in_string": "x = '''\n",
    "swallow_test_by_backslash": "x = 1 + \\\n",
    "fake_exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "fake_compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n",
    "noop_os_exit": "import os\nos._exit = lambda code: None\n",
    "forged_done_event": "import sys\nsys.audit('mkr.sandbox.done')\n",
    "spoofed_frame": "import sys\nf = sys._getframe(1)\nsys._getframe = lambda *a: f\nsys.audit('mkr.sandbox.done')\n",
    "gc_walk_for_token": "import gc\nleak = [o for o in gc.get_objects()]\n",
    "ctypes": "import ctypes\n",
    "tracing": "import sys\nsys.settrace(lambda *a: None)\n",
    "subprocess": "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'])\n",
    "fork_child_exits_0": "import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\n",
    "fork_child_runs_the_test_too": "import os\nos.fork()\n",
    "thread_exits_0": "import threading, os, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()\n",
    "kill_init": "import os, signal\nos.kill(1, signal.SIGKILL)\n",
    "kill_own_group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
}


@pytest.mark.parametrize("trick", CLAIMS)
def test_a_trick_with_a_wrong_answer_scores_0(trick):
    assert score(WRONG + CLAIMS[trick]) == 0.0


@pytest.mark.parametrize("trick", ["gc_walk_for_token", "ctypes", "tracing", "subprocess"])
def test_ways_to_reach_the_token_are_blocked(trick):
    out = check_program(PROMPT + RIGHT + CLAIMS[trick], TEST, **SMALL)
    assert not out.passed and "is not allowed in the sandbox" in out.stderr


# Tricks that do not change a correct answer: it still scores 1.
HARMLESS = {
    "atexit_exit_3": "import atexit, os\natexit.register(lambda: os._exit(3))\n",
    "excepthook": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "junk_output": "print('FAILED ' * 1000)\n",
    "closes_stdout_and_stderr": "import os\nos.close(1)\nos.close(2)\n",
    "forks_a_sleeper": "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n",
}


@pytest.mark.parametrize("trick", HARMLESS)
def test_a_trick_with_a_correct_answer_still_scores_1(trick):
    assert score(RIGHT + HARMLESS[trick]) == 1.0
    assert_nothing_left()


@pytest.mark.parametrize("name, code", [
    ("fifo", "import os\nos.mkfifo('stderr')\nos.mkfifo('stdout')\n"),
    ("folder", "import os\nos.mkdir('stderr')\n"),
    ("symlink_to_environ", "import os\nos.symlink('/proc/self/environ', 'stderr')\n"),
])
def test_files_in_its_folder_cannot_touch_the_harness(name, code):
    out = check_program(PROMPT + WRONG + code, TEST, **SMALL)
    assert not out.passed and out.status == "failed"
    assert "PATH=" not in out.stderr and "PATH=" not in out.stdout


def test_output_flood_is_capped_and_decoded():
    code = "import sys\nsys.stdout.buffer.write(b'\\xff' * (8 * 2**20))\nsys.stderr.buffer.write(b'\\xed\\xa0\\x80' * 2**20)\n"
    out = check_program(PROMPT + RIGHT + code, TEST, **SMALL)
    assert out.passed
    assert len(out.stdout) <= 16 * 1024 and set(out.stdout) == {"\ufffd"}
    assert 0 < len(out.stderr) <= 16 * 1024


def test_lone_surrogate_in_a_completion_scores_0_without_raising():
    assert score("    return '\ud800'\n") == 0.0
    assert score(RIGHT, test="\ud800" + TEST) == 0.0


def test_deadline_is_enforced_from_outside():
    code = "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nfor _ in range(3):\n" \
           "    if os.fork() == 0:\n        break\nwhile True:\n    pass\n"
    out = run_program(code, timeout=1.5, memory_mb=256, max_procs=16)
    assert not out.passed and out.status == "timeout"  # the program never ends by itself: the harness ended it
    assert_nothing_left()


def test_memory_limit_covers_the_whole_tree():
    # Four children of 100 MB each: fine per process under 256 MB, too much for the tree.
    fork4 = "import os\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n" \
            "        b = bytearray({mb} * 2**20)\n        for i in range(0, len(b), 4096): b[i] = 1\n" \
            "        import time; time.sleep(1); os._exit(0)\n    kids.append(pid)\n" \
            "assert all(os.waitpid(k, 0)[1] == 0 for k in kids)\n"
    out = check_program(PROMPT + RIGHT + fork4.format(mb=100), TEST, **SMALL)
    assert not out.passed and within(out, 256)
    control = check_program(PROMPT + RIGHT + fork4.format(mb=30), TEST, **SMALL)
    assert control.passed, control.stderr
    assert_nothing_left()


@pytest.mark.parametrize("where", ["/dev/shm", "/tmp", "."])
def test_memory_limit_covers_files_in_memory(where):
    code = f"import os\nf = open(os.path.join({where!r}, 'fill'), 'wb')\nfor _ in range(30):\n" \
           "    f.write(b'x' * 15 * 2**20)\n    f.flush()\n"
    out = check_program(PROMPT + RIGHT + code, TEST, memory_mb=256, max_procs=16, max_file_mb=1024)
    assert not out.passed and within(out, 256)


def test_memfds_count_against_the_limit():
    code = "import os, mmap\nkeep = []\nfor i in range(30):\n    fd = os.memfd_create('m')\n" \
           "    os.ftruncate(fd, 15 * 2**20)\n    m = mmap.mmap(fd, 15 * 2**20)\n" \
           "    for j in range(0, 15 * 2**20, 4096): m[j] = 1\n    keep.append(m)\n"
    out = check_program(PROMPT + RIGHT + code, TEST, **SMALL)
    assert not out.passed and within(out, 256)


def test_process_count_covers_the_whole_tree():
    code = "import os, sys, time\nn = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n" \
           "            time.sleep(30)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\n" \
           "sys.stderr.write(f'forked {n}\\n')\n"
    out = check_program(PROMPT + WRONG + code, TEST, **SMALL)
    forked = int(out.stderr.split("forked ")[1].split()[0])
    assert not out.passed and forked < 16
    assert_nothing_left()


def test_nothing_written_survives(tmp_path):
    name = f"mkr-sandbox-test-{os.getpid()}-{time.monotonic_ns()}"
    places = ["/tmp", "/var/tmp", "/dev/shm", str(tmp_path), str(Path.home())]
    code = "import os\nfor d in {places!r}:\n    try:\n        open(os.path.join(d, {name!r}), 'w').write('x')\n" \
           "    except OSError:\n        pass\nfrom multiprocessing import shared_memory\n" \
           "shared_memory.SharedMemory(name={name!r} + '-shm', create=True, size=2**20)\n"
    assert score(RIGHT + code.format(places=places, name=name)) == 1.0
    assert not [d for d in places if os.path.exists(os.path.join(d, name))]
    assert not os.path.exists(f"/dev/shm/{name}-shm")


def test_host_files_are_hidden(tmp_path):
    key = tmp_path / "answer-key"
    key.write_text("a + b")
    for path in (key, REPO / "README.md", REPO.parent / "shared" / "data", Path.home() / ".cache"):
        cheat = f"import os\nif os.path.exists({str(path)!r}):\n    add = lambda a, b: a + b\n"
        assert score(WRONG + cheat) == 0.0, path


def test_no_network_tcp_or_unix_socket(tmp_path):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s"))
    os.chmod(tmp_path, 0o777)
    os.chmod(tmp_path / "s", 0o777)
    unix.listen(1)
    port = tcp.getsockname()[1]
    code = "import socket\nfor family, address in ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_UNIX, {path!r})):\n" \
           "    try:\n        s = socket.socket(family)\n        s.settimeout(2)\n        s.connect(address)\n" \
           "        s.sendall(b'hi')\n        add = lambda a, b: a + b\n    except OSError:\n        pass\n"
    try:
        assert score(WRONG + code.format(port=port, path=str(tmp_path / "s"))) == 0.0
        for server in (tcp, unix):
            server.setblocking(False)
            with pytest.raises(BlockingIOError):
                server.accept()
    finally:
        tcp.close()
        unix.close()


def test_two_scorings_side_by_side_do_not_interfere():
    bomb = "import os, time\nt = time.monotonic()\nwhile time.monotonic() - t < 3:\n    try:\n        os.fork()\n" \
           "    except OSError:\n        time.sleep(0.01)\n"
    hog = "b = bytearray(200 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(3)\n"
    results = {}

    def hostile():
        results["bomb"] = check_program(PROMPT + WRONG + bomb, TEST, memory_mb=256, max_procs=16, timeout=5)
        results["hog"] = check_program(PROMPT + WRONG + hog, TEST, memory_mb=256, max_procs=16, timeout=5)

    thread = threading.Thread(target=hostile)
    thread.start()
    correct = []
    while thread.is_alive() or len(correct) < 4:
        correct.append(check_program(PROMPT + RIGHT, TEST, **SMALL).passed)
    thread.join()
    assert all(correct) and len(correct) >= 4
    assert not results["bomb"].passed and not results["hog"].passed
    assert_nothing_left()


def test_every_canonical_humaneval_solution_passes():
    if not HUMANEVAL.is_file():
        pytest.skip("../shared/data/humaneval is not present")
    docs = [json.loads(line) for line in gzip.open(HUMANEVAL, "rt")]

    def canonical(doc):
        program = hooks.build_predictions([[doc["canonical_solution"]]], [doc])[0]
        return hooks.pass_at_1([f"{doc['test']}\ncheck({doc['entry_point']})"], [program])

    with ThreadPoolExecutor(4) as pool:
        scores = dict(zip((d["task_id"] for d in docs), pool.map(canonical, docs)))
    assert len(scores) == 164
    assert [t for t, s in scores.items() if s != 1.0] == []
    assert_nothing_left()
