"""Both ends of the call channel between a HumanEval program and its trusted checker.

Standard library only: the harness sends this file's text into each sandbox, which
has no access to the project. `serve` runs in the program's sandbox (untrusted);
`check` runs in the checker's own sandbox (trusted) and is the only place a verdict
is made. Values cross as plain data: `ascii()` text, read back by `decode`, which
accepts literals only (numbers, strings, bytes, bool, None, tuple, list, dict, set)
under caps on size and nesting. No object of the program's ever reaches the
checker, so its methods (`__eq__`, `__repr__`, ...) never run there.
"""

import _ast as ast  # ast.py's node classes without its imports: each sandbox starts faster
import builtins
import os
import select
import sys
import time

# Bytes of one encoded call or reply: HumanEval's largest are 457 and 195 bytes (all 164
# canonical solutions, 1,537 calls); a reply at the cap takes the checker ~30 MB to decode.
MESSAGE_CAP = 1 << 16
MAX_DEPTH = 64  # nesting of containers in one value
_compile, _ascii = compile, ascii  # bound now: a program that replaces builtins still gets its replies sent
_NUMBERS = (int, float, complex)
_CONSTANTS = _NUMBERS + (str, bytes, bool, type(None))


class ChannelError(Exception):
    """The other end broke the protocol, went away, or sent something that is not plain data."""


class ChannelTimeout(ChannelError):
    """No reply before the deadline."""


class ProgramRaised(Exception):
    """The program's function raised; the message is the program's own text."""


def encode(value) -> bytes:
    """Plain data as ASCII text; raises (ValueError, RecursionError) for what `ascii` cannot write."""
    return _ascii(value).encode("ascii")


def decode(data: bytes):
    """The literal in `data`, or ChannelError: never runs code, never raises anything else."""
    if len(data) > MESSAGE_CAP:
        raise ChannelError(f"message of {len(data)} bytes is over the cap")
    try:
        tree = _compile(data.decode("ascii"), "<value>", "eval", ast.PyCF_ONLY_AST)
        return _literal(tree.body, 0)
    except ChannelError:
        raise
    except Exception as exc:  # SyntaxError, MemoryError, RecursionError, unhashable set items...
        raise ChannelError(f"not plain data ({type(exc).__name__})") from None


def _literal(node, depth):
    if depth > MAX_DEPTH:
        raise ChannelError("value nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in _CONSTANTS:
        return node.value
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):  # how ascii() writes them
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, depth + 1)
        if type(operand) in _NUMBERS:
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):  # complex: (1+2j)
        real, imag = _literal(node.left, depth + 1), _literal(node.right, depth + 1)
        if type(real) in (int, float) and type(imag) is complex:
            return real + imag if isinstance(node.op, ast.Add) else real - imag
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_literal(item, depth + 1) for item in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, depth + 1): _literal(v, depth + 1) for k, v in zip(node.keys, node.values)}
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "set"
        and not node.args
        and not node.keywords
    ):
        return set()
    raise ChannelError(f"not plain data: {type(node).__name__}")


def send(fd: int, payload: bytes, deadline=None) -> None:
    """One length-prefixed message; with a deadline the fd must be non-blocking."""
    data = memoryview(len(payload).to_bytes(4, "big") + payload)
    while data:
        _wait(fd, deadline, write=True)
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            continue
        except OSError as exc:
            raise ChannelError(f"channel closed ({exc.strerror})") from None


def receive(fd: int, cap: int = MESSAGE_CAP, deadline=None) -> bytes:
    """One length-prefixed message of at most `cap` bytes.

    Reads as much as the pipe holds at once, so that when a program forks and two
    processes read one pipe, a whole message (written in one go) goes to one of them.
    """
    buf = _unread.setdefault(fd, bytearray())
    try:
        while True:
            if len(buf) >= 4:
                size = int.from_bytes(buf[:4], "big")
                if size > cap:
                    raise ChannelError(f"message of {size} bytes is over the cap of {cap}")
                if len(buf) >= 4 + size:
                    break
            _wait(fd, deadline, write=False)
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise ChannelError(f"channel closed ({exc.strerror})") from None
            if not chunk:
                raise ChannelError("the other end went away (end of file on the channel)")
            buf += chunk
    except ChannelError:
        del _unread[fd]  # the channel is done for: nothing read from it may count later
        raise
    message = bytes(buf[4 : 4 + size])
    del buf[: 4 + size]
    return message


_unread = {}  # fd -> bytes read past the last message


def _wait(fd, deadline, write):
    if deadline is None:
        return
    left = deadline - time.monotonic()
    ready = select.select([], [fd], [], max(left, 0))[1] if write else select.select([fd], [], [], max(left, 0))[0]
    if not ready:
        raise ChannelTimeout("the program did not answer before the deadline")


def _keep_only(*fds):
    """Close every inherited fd but stdin/stdout/stderr and `fds`."""
    low = 3
    for fd in sorted(fds):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _print_exception():
    """The traceback of the exception being handled, to stderr (the interpreter's own printer, no imports)."""
    try:
        sys.__excepthook__(*sys.exc_info())
    except BaseException:
        pass


def serve(request_fd: int, reply_fd: int, *, program: str) -> None:
    """Untrusted side: run the program (prompt + completion), then answer calls until the channel closes."""
    _keep_only(request_fd, reply_fd)
    sys.argv = ["program.py"]
    builtins.exit = builtins.quit = sys.exit  # as in a normal interpreter (-S leaves them out)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(program, "<program>", "exec"), namespace)
    except BaseException:
        _print_exception()
        os._exit(1)
    while True:
        try:
            call_id, name, args, kwargs = decode(receive(request_fd, MESSAGE_CAP))
        except Exception:
            os._exit(0)  # the checker is done (or gone)
        try:
            reply = (call_id, "return", namespace[name](*args, **kwargs))
            payload = encode(reply)
        except BaseException as exc:
            try:
                why = f"{type(exc).__name__}: {exc}"[:1000]
            except BaseException:
                why = "unprintable exception"
            payload = encode((call_id, "raise", why))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        send(reply_fd, payload)


class _Remote:
    """The checker's stand-in for the program's function: each call goes over the channel.

    Any protocol fault breaks the channel for good, and the verdict needs an unbroken
    one, so a test that swallows exceptions still cannot pass on a faulty reply.
    """

    def __init__(self, name, request_fd, reply_fd, deadline):
        self.name, self.request_fd, self.reply_fd, self.deadline = name, request_fd, reply_fd, deadline
        self.broken = None

    def __call__(self, *args, **kwargs):
        if self.broken is not None:
            raise self.broken
        call_id = int.from_bytes(os.urandom(8), "big")  # a reply must answer this call, not be written in advance
        try:
            request = encode((call_id, self.name, args, kwargs))
            decode(request)  # the test's own arguments must be plain data too
            send(self.request_fd, request, self.deadline)
            reply = decode(receive(self.reply_fd, MESSAGE_CAP, self.deadline))
            if (
                type(reply) is not tuple
                or len(reply) != 3
                or reply[0] != call_id
                or reply[1] not in ("return", "raise")
                or (reply[1] == "raise" and type(reply[2]) is not str)
            ):
                raise ChannelError("malformed reply")
        except ChannelError as exc:
            self.broken = exc
            raise
        except Exception as exc:  # our own encoding of an argument failed
            self.broken = ChannelError(f"cannot send the arguments ({type(exc).__name__})")
            raise self.broken from None
        if reply[1] == "raise":
            raise ProgramRaised(reply[2])
        return reply[2]


def check(
    request_fd: int, reply_fd: int, verdict_fd: int, *, prompt: str, test: str, entry_point: str, seconds: float
) -> None:
    """Trusted side: the dataset's prompt and test, with the entry point bound to the program over the channel.

    Writes `pass` to the verdict fd only if `check(candidate)` returned and every call got
    a well-formed reply; `timeout` or `fail` otherwise (the reason goes to stderr).
    """
    deadline = time.monotonic() + seconds
    _keep_only(request_fd, reply_fd, verdict_fd)
    for fd in (request_fd, reply_fd):
        os.set_blocking(fd, False)
    remote = _Remote(entry_point, request_fd, reply_fd, deadline)
    verdict = b"fail"
    try:
        if not entry_point.isidentifier():
            raise ValueError(f"entry point {entry_point!r} is not a name")
        namespace = {"__name__": "__main__"}
        exec(compile(prompt, "<prompt>", "exec"), namespace)  # helpers some tests use (poly, encode_cyclic)
        namespace[entry_point] = remote
        exec(compile(test, "<test>", "exec"), namespace)
        namespace["check"](remote)
        if remote.broken is not None:
            raise remote.broken
        verdict = b"pass"
    except BaseException as exc:
        if isinstance(exc, ChannelTimeout) or isinstance(remote.broken, ChannelTimeout):
            verdict = b"timeout"
        _print_exception()
        if remote.broken is not None and remote.broken is not exc:
            print(f"channel: {remote.broken}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(verdict_fd, verdict)
    os._exit(0)
