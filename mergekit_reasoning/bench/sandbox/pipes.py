"""Reading a sandboxed program's pipes: capped to their tails, decoded with replacement,
under a deadline, so nothing a program writes can make scoring raise or hang."""

from __future__ import annotations

import os
import selectors
import time

OUTPUT_CAP = 16 * 1024  # bytes kept of stdout and of stderr (the tail: tracebacks end there)


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def read(pipes: dict, kept: dict, until_closed: set, deadline: float) -> bool:
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
