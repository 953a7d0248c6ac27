"""Say at once when the Hugging Face hub is out of reach, instead of retrying.

Without a network the hub libraries retry each request for about half a minute
before they fail. When the hub's host name does not even resolve, the commands
that read models switch those libraries to their own offline mode
(`HF_HUB_OFFLINE=1`) and say so in one line: local folders and the Hugging Face
cache still work, and a model that is only on the hub fails at once, in one line.
Setting `HF_HUB_OFFLINE` yourself (to anything) skips the probe.
"""

import os
import socket
import sys
import threading
from typing import Callable, Optional
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def resolves(host: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether `host` resolves within `timeout` seconds (a lookup that hangs counts as no)."""
    answer = []

    def look_up():
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=look_up, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


def go_offline_if_unreachable(echo: Callable[[str], None], host: Optional[str] = None) -> bool:
    """Switch the hub libraries to offline mode when the hub cannot be reached; True if it did."""
    if "HF_HUB_OFFLINE" in os.environ:
        return False
    host = host or hub_host()
    if resolves(host):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable at import
        constants.HF_HUB_OFFLINE = True
    echo(
        f"note: {host} cannot be reached, so only local folders and the Hugging Face cache are used (HF_HUB_OFFLINE=1)"
    )
    return True
