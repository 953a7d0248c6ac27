"""Without a network, commands switch the hub libraries to offline mode at once and say so."""

import socket

from mergekit_reasoning.core import offline


def _no_dns(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known")


def test_an_unresolvable_hub_switches_to_offline_mode_with_one_note(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # restored after the test
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    notes = []
    assert offline.go_offline_if_unreachable(notes.append, host="hub.invalid")
    assert offline.os.environ["HF_HUB_OFFLINE"] == "1"
    assert notes == [
        "note: hub.invalid cannot be reached, so only local folders and the Hugging Face cache are used (HF_HUB_OFFLINE=1)"
    ]


def test_a_reachable_hub_or_an_explicit_setting_changes_nothing(monkeypatch):
    notes = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    assert not offline.go_offline_if_unreachable(notes.append, host="hub.invalid")  # the user decided
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [("ok",)])
    assert not offline.go_offline_if_unreachable(notes.append, host="hub.example")
    assert notes == [] and "HF_HUB_OFFLINE" not in offline.os.environ


def test_a_hanging_lookup_counts_as_unreachable(monkeypatch):
    import threading

    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(5))
    try:
        assert not offline.resolves("hub.example", timeout=0.05)
    finally:
        release.set()
