"""Malicious HumanEval completions fail without harming the run or the host."""

import os
import socket
import threading
import time

import pytest

from mergekit_reasoning.bench.sandbox import check_program, isolation, run_program

TEST = "def check(f):\n    assert f(2, 3) == 5\n"


def _sandbox_processes():
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"mkr-sandbox-" in f.read():
                        found.append(pid)
            except OSError:
                pass
    return found


def test_correct_and_wrong_programs():
    assert check_program("def add(a, b):\n    return a + b\n", TEST + "check(add)").passed
    out = check_program("def add(a, b):\n    return a - b\n", TEST + "check(add)")
    assert not out.passed and out.status == "failed" and "AssertionError" in out.stderr


def test_infinite_loop_is_killed_on_time():
    start = time.monotonic()
    out = run_program("while True:\n    pass\n", timeout=1.5)
    assert not out.passed and out.status == "timeout"
    assert time.monotonic() - start < 6
    assert not _sandbox_processes()


def test_sleeping_children_die_with_the_program():
    code = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\ntime.sleep(60)\n"
    out = run_program(code, timeout=1)
    assert out.status == "timeout"
    time.sleep(0.2)
    assert not _sandbox_processes()


def test_fork_bomb_is_contained():
    if isolation() == "rlimits" and os.geteuid() == 0:
        pytest.skip("root without unshare: RLIMIT_NPROC does not apply")
    out = run_program("import os\nwhile True:\n    os.fork()\n", timeout=5, max_procs=16)
    assert not out.passed
    time.sleep(0.2)
    assert not _sandbox_processes()


def test_huge_allocation_fails():
    out = run_program("x = bytearray(16 * 1024**3)\n", memory_mb=512)
    assert not out.passed and "MemoryError" in out.stderr


def test_write_outside_folder_fails(tmp_path):
    if isolation() != "nobody":
        pytest.skip("only the root + unshare mode drops privileges")
    target = tmp_path / "evil.txt"
    out = run_program(f"open({str(target)!r}, 'w').write('pwned')\n")
    assert not out.passed and not target.exists()


def test_big_file_in_own_folder_is_capped():
    out = run_program("open('big', 'wb').write(b'x' * (64 * 2**20))\n", max_file_mb=1)
    assert not out.passed


def test_socket_to_localhost_fails():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept(server, accepted))
    thread.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    out = run_program(code, timeout=5)
    thread.join()
    server.close()
    assert not out.passed and not accepted


def _accept(server, accepted):
    try:
        accepted.append(server.accept())
    except OSError:
        pass


def test_killing_parent_and_group_is_harmless():
    out = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)\n")
    assert not out.passed
    assert run_program("print('still fine')\n").passed
