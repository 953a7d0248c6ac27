"""Hostile HumanEval completions: every trick scores 0, correct answers score 1, nothing survives.

Programs are scored the way lm-eval scores them (`mkr_hooks.pass_at_1`) or through
`check_program` where a test needs the outcome's details. The verdict is made by a
trusted checker in a sandbox of its own; the program can only answer its calls, so
the attacks below try every other way to reach a pass: exit codes, output, writes
to every fd, forged or malformed replies, frames and signal handlers. Limits are
kept small (256 MB, 16 processes) so the bombs stay harmless to the host, and every
check of "what is left" looks only at this test process's own sandboxes: their
cgroups are named after its pid.
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

from mergekit_reasoning.bench.sandbox import check_program as check_with
from mergekit_reasoning.bench.sandbox import isolation
from mergekit_reasoning.bench.tasks import mkr_hooks as hooks

pytestmark = pytest.mark.skipif(
    not isolation().full, reason=f"full sandbox isolation is missing here: {'; '.join(isolation().missing)}"
)

PROMPT = 'def add(a, b):\n    """The sum of a and b."""\n'
RIGHT = "    return a + b\n"
WRONG = "    return a - b\n"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
SMALL = dict(memory_mb=256, max_procs=16, timeout=10)
REPO = Path(__file__).resolve().parents[2]
HUMANEVAL = REPO / ".." / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def score(completion: str, test: str = TEST) -> float:
    return hooks.pass_at_1([{"prompt": PROMPT, "test": test, "entry_point": "add"}], [PROMPT + completion])


def scores(completions: dict, test: str = TEST) -> dict:
    """Name -> score for many completions at once (each scoring mostly waits on process start-up)."""
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(completions, pool.map(lambda c: score(c, test), completions.values())))


def check_program(program: str, test: str = TEST, **limits):
    return check_with(program, PROMPT, test, "add", **limits)


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
    assert not out.passed and out.status == "failed" and "AssertionError" in out.report
    assert out.isolation == "full"


# The lead's forgery of the audit-hook verdict (a wrong answer scored as passed before the
# checker moved out of the program's process): read the token from the hook's frame.
LEAD_FORGERY = """import os, gc
try:
    gc.get_objects()
except PermissionError as e:
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    loc = tb.tb_frame.f_locals
    os.write(loc["ver_fd"], loc["token"])
    os._exit(0)
"""

# Walk every frame the program can reach (from its own code, or from a signal handler,
# which gets the frame that was running) and write what could be a verdict to every fd
# found there, set every flag, then leave with exit status 0.
FRAME_WALK = """import os, sys
def _forge(frame):
    while frame is not None:
        found = dict(frame.f_locals)
        for name, value in found.items():
            if type(value) is int and 0 <= value < 256:
                for claim in [v for v in found.values() if type(v) is bytes] + [b"pass", b"\\0\\0\\0\\x04pass"]:
                    try:
                        os.write(value, claim)
                    except OSError:
                        pass
            if type(value) is bool:
                try:
                    frame.f_locals[name] = True
                except Exception:
                    pass
        frame = frame.f_back
    os._exit(0)
"""

# Well-formed replies, written to every fd before any call, for the answers the test
# wants (5, then 0) under guessed call ids; and plain "pass" claims.
FAKE_REPLIES = """import os
claims = [b"pass", b"pass\\n"]
for call_id in range(4):
    for value in (5, 0, True):
        payload = ascii((call_id, "return", value)).encode()
        claims.append(len(payload).to_bytes(4, "big") + payload)
for fd in range(256):
    for claim in claims:
        try:
            os.write(fd, claim)
        except OSError:
            pass
"""

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
    "fake_replies_on_every_fd": FAKE_REPLIES,
    "swallow_test_in_string": "x = '''\n",
    "swallow_test_by_backslash": "x = 1 + \\\n",
    "fake_exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "fake_compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n",
    "noop_os_exit": "import os\nos._exit = lambda code: None\n",
    "forged_done_event": "import sys\nsys.audit('mkr.sandbox.done')\n",
    "spoofed_frame": "import sys\nf = sys._getframe(1)\nsys._getframe = lambda *a: f\nsys.audit('mkr.sandbox.done')\n",
    "lead_traceback_forgery": LEAD_FORGERY,
    "frame_walk_from_the_program": FRAME_WALK + "_forge(sys._getframe())\n",
    "frame_walk_from_the_call": FRAME_WALK + "def add(a, b):\n    _forge(sys._getframe())\n",
    "frame_walk_from_a_signal_handler": FRAME_WALK
    + "import signal\nsignal.signal(signal.SIGALRM, lambda n, f: _forge(f))\n"
    "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n",
    "gc_walk_for_token": "import gc\nleak = [o for o in gc.get_objects()]\n",
    "ctypes": "import ctypes\n",
    "tracing": "import sys\nsys.settrace(lambda *a: None)\n",
    "subprocess": "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'])\n",
    "fork_child_exits_0": "import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\n",
    "fork_child_runs_the_test_too": "import os\nos.fork()\n",
    "thread_exits_0": "import threading, os, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()\n",
    "kill_init": "import os, signal\nos.kill(1, signal.SIGKILL)\n",
    "kill_own_group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
    "kill_every_process_in_sight": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "object_equal_to_everything": "class Yes:\n    def __eq__(self, other):\n        return True\n"
    "def add(a, b):\n    return Yes()\n",
    "str_and_int_equal_to_everything": "class S(str):\n    __eq__ = lambda self, other: True\n"
    "class I(int):\n    __eq__ = lambda self, other: True\n"
    "def add(a, b):\n    return (S('x'), I(7))[b % 2]\n",
    "redefine_a_builtin_the_test_uses": "import builtins\nbuiltins.AssertionError = SystemExit\n",
    "right_once_then_exit_mid_test": "import os\ncalls = []\ndef add(a, b):\n    calls.append(1)\n"
    "    if len(calls) > 1:\n        os._exit(0)\n    return a + b\n",
    "exit_before_replying": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "exit_0_in_the_call": "def add(a, b):\n    exit(0)\n",
    "returns_a_huge_list": "def add(a, b):\n    return [a + b] * 10**6\n",
    "returns_a_deeply_nested_list": "def add(a, b):\n    x = a + b\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "returns_a_recursive_list": "def add(a, b):\n    x = [a + b]\n    x.append(x)\n    return x\n",
}


def test_every_trick_with_a_wrong_answer_scores_0():
    assert scores({trick: WRONG + code for trick, code in CLAIMS.items()}) == dict.fromkeys(CLAIMS, 0.0)


def test_redefining_a_builtin_the_test_calls_scores_0():
    # The test runs in the checker's interpreter, where the program's builtins do not reach.
    test = "def check(candidate):\n    assert abs(candidate(2, 3) - 5) < 1e-9\n"
    assert score(RIGHT, test=test) == 1.0
    assert score(WRONG + "import builtins\nbuiltins.abs = lambda x: 0\n", test=test) == 0.0


def test_the_lead_forgery_reaches_nothing_now():
    # It needed the token in the program's own interpreter: there is none, and no hook to trip.
    out = check_program(PROMPT + WRONG + LEAD_FORGERY.replace("PermissionError", "Exception"), **SMALL)
    assert not out.passed and "AssertionError" in out.report


# A reply forged by the program inside the call (right call id, its own bytes), answering
# a test that accepts any reply at all: each would pass if the checker took it.
FORGE = (
    "import os, sys\ndef add(a, b):\n    f = sys._getframe(1).f_locals\n    data = {text!r}.replace('ID', str(f['call_id'])).encode()\n"
    "    os.write(f['reply_fd'], {header} + data)\n    return a - b\n"
)
ANY_REPLY = "def check(candidate):\n    candidate(2, 3)\n"
FORGED = {
    "nested_past_the_cap": "(ID, 'return', " + "[" * 100 + "5" + "]" * 100 + ")",
    "nested_past_the_parser": "(ID, 'return', " + "[" * 50000 + "]" * 50000 + ")",
    "over_the_size_cap": "(ID, 'return', [" + "5," * 200000 + "])",
    "giant_int": "(ID, 'return', " + "9" * 20000 + ")",
    "code": "(ID, 'return', __import__('os').getpid())",
    "lambda_call": "(ID, 'return', (lambda: 5)())",
    "conditional": "(ID, 'return', 5 if 1 else 0)",
    "ellipsis_of_a_recursive_list": "(ID, 'return', [[...]])",
    "dict_unpacking": "(ID, 'return', {**{}})",
    "not_a_reply": "'pass'",
    "wrong_call_id": "(1, 'return', 5)",
    "not_ascii": "(ID, 'return', '\u00e9')",
}


def test_forged_replies_that_are_not_plain_data_score_0():
    programs = {name: FORGE.format(text=text, header="len(data).to_bytes(4, 'big')") for name, text in FORGED.items()}
    assert scores(programs, test=ANY_REPLY) == dict.fromkeys(FORGED, 0.0)


def test_a_forged_header_claiming_gigabytes_scores_0():
    assert score(FORGE.format(text="x", header="b'\\xff\\xff\\xff\\xff'"), test=ANY_REPLY) == 0.0


def test_a_well_formed_forged_reply_is_just_a_returned_value():
    # The control for the forgeries above: the same route with plain data passes that test,
    # so their 0 comes from the checker refusing them.
    assert score(FORGE.format(text="(ID, 'return', 5)", header="len(data).to_bytes(4, 'big')"), test=ANY_REPLY) == 1.0


def test_the_program_never_sees_the_test():
    code = "import gc\nprint(any('assert candidate' in o for o in gc.get_objects() if type(o) is str))\n"
    out = check_program(PROMPT + RIGHT + code, **SMALL)
    assert out.passed and out.stdout == "False\n"


def test_a_call_that_hangs_is_ended_at_the_deadline():
    out = check_program(PROMPT + "    while True:\n        pass\n", timeout=2, memory_mb=256, max_procs=16)
    assert not out.passed and out.status == "timeout" and "deadline" in out.report
    assert_nothing_left()


def test_a_checker_that_hangs_is_ended_from_outside():
    # A test that never returns stands for a checker stuck for any reason: the harness kills it.
    out = check_program(
        PROMPT + RIGHT,
        test="def check(candidate):\n    while True:\n        pass\n",
        timeout=1.5,
        memory_mb=256,
        max_procs=16,
    )
    assert not out.passed and out.status == "timeout" and "harness's deadline" in out.report
    assert_nothing_left()


# Tricks that do not change a correct answer: it still scores 1.
HARMLESS = {
    "atexit_exit_3": "import atexit, os\natexit.register(lambda: os._exit(3))\n",
    "excepthook": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "junk_output": "print('FAILED ' * 1000)\n",
    "closes_stdout_and_stderr": "import os\nos.close(1)\nos.close(2)\n",
    "forks_a_sleeper": "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n",
    "gc_walk": "import gc\nleak = [o for o in gc.get_objects()]\n",
    "ctypes": "import ctypes\nctypes.CDLL(None)\n",
    "tracing": "import sys\nsys.settrace(lambda *a: None)\n",
    "subprocess": "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)\n",
    "replaces_exec_and_compile": "import builtins\nbuiltins.exec = builtins.compile = None\n",
    "signal_handler": "import signal\nsignal.signal(signal.SIGALRM, lambda n, f: None)\nsignal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n",
}


def test_every_harmless_trick_with_a_correct_answer_still_scores_1():
    assert scores({trick: RIGHT + code for trick, code in HARMLESS.items()}) == dict.fromkeys(HARMLESS, 1.0)
    assert_nothing_left()


@pytest.mark.parametrize(
    "name, code",
    [
        ("fifo", "import os\nos.mkfifo('stderr')\nos.mkfifo('stdout')\n"),
        ("folder", "import os\nos.mkdir('stderr')\n"),
        ("symlink_to_environ", "import os\nos.symlink('/proc/self/environ', 'stderr')\n"),
    ],
)
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
    code = (
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nfor _ in range(3):\n"
        "    if os.fork() == 0:\n        break\nwhile True:\n    pass\n"
    )
    out = check_program(PROMPT + RIGHT + code, timeout=1.5, memory_mb=256, max_procs=16)
    assert not out.passed and out.status == "timeout"  # the program never ends by itself: the harness ended it
    assert_nothing_left()


def test_memory_limit_covers_the_whole_tree():
    # Four children of 100 MB each: fine per process under 256 MB, too much for the tree.
    fork4 = (
        "import os\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
        "        b = bytearray({mb} * 2**20)\n        for i in range(0, len(b), 4096): b[i] = 1\n"
        "        import time; time.sleep(1); os._exit(0)\n    kids.append(pid)\n"
        "assert all(os.waitpid(k, 0)[1] == 0 for k in kids)\n"
    )
    out = check_program(PROMPT + RIGHT + fork4.format(mb=100), TEST, **SMALL)
    assert not out.passed and within(out, 256)
    control = check_program(PROMPT + RIGHT + fork4.format(mb=30), TEST, **SMALL)
    assert control.passed, control.stderr
    assert_nothing_left()


@pytest.mark.parametrize("where", ["/dev/shm", "/tmp", "."])
def test_memory_limit_covers_files_in_memory(where):
    code = (
        f"import os\nf = open(os.path.join({where!r}, 'fill'), 'wb')\nfor _ in range(30):\n"
        "    f.write(b'x' * 15 * 2**20)\n    f.flush()\n"
    )
    out = check_program(PROMPT + RIGHT + code, TEST, memory_mb=256, max_procs=16, max_file_mb=1024)
    assert not out.passed and within(out, 256)


def test_memfds_count_against_the_limit():
    code = (
        "import os, mmap\nkeep = []\nfor i in range(30):\n    fd = os.memfd_create('m')\n"
        "    os.ftruncate(fd, 15 * 2**20)\n    m = mmap.mmap(fd, 15 * 2**20)\n"
        "    for j in range(0, 15 * 2**20, 4096): m[j] = 1\n    keep.append(m)\n"
    )
    out = check_program(PROMPT + RIGHT + code, TEST, **SMALL)
    assert not out.passed and within(out, 256)


def test_process_count_covers_the_whole_tree():
    code = (
        "import os, sys, time\nn = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\n"
        "sys.stderr.write(f'forked {n}\\n')\n"
    )
    out = check_program(PROMPT + WRONG + code, TEST, **SMALL)
    forked = int(out.stderr.split("forked ")[1].split()[0])
    assert not out.passed and forked < 16
    assert_nothing_left()


def test_nothing_written_survives(tmp_path):
    name = f"mkr-sandbox-test-{os.getpid()}-{time.monotonic_ns()}"
    places = ["/tmp", "/var/tmp", "/dev/shm", str(tmp_path), str(Path.home())]
    code = (
        "import os\nfor d in {places!r}:\n    try:\n        open(os.path.join(d, {name!r}), 'w').write('x')\n"
        "    except OSError:\n        pass\nfrom multiprocessing import shared_memory\n"
        "shared_memory.SharedMemory(name={name!r} + '-shm', create=True, size=2**20)\n"
    )
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
    code = (
        "import socket\nfor family, address in ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_UNIX, {path!r})):\n"
        "    try:\n        s = socket.socket(family)\n        s.settimeout(2)\n        s.connect(address)\n"
        "        s.sendall(b'hi')\n        add = lambda a, b: a + b\n    except OSError:\n        pass\n"
    )
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
    bomb = (
        "import os, time\nt = time.monotonic()\nwhile time.monotonic() - t < 3:\n    try:\n        os.fork()\n"
        "    except OSError:\n        time.sleep(0.01)\n"
    )
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
        return hooks.pass_at_1([hooks.humaneval_reference(doc)], [program])

    with ThreadPoolExecutor(8) as pool:  # each scoring mostly waits on process start-up
        scores = dict(zip((d["task_id"] for d in docs), pool.map(canonical, docs)))
    assert len(scores) == 164
    assert [t for t, s in scores.items() if s != 1.0] == []
    assert_nothing_left()
