"""The call channel's wire format: plain data round-trips; anything else is one ChannelError.

No sandbox needed: these run everywhere. The checker's only view of a program is what
`decode` returns, so it is tried here with hostile text directly.
"""

import math
import os
import time
import tracemalloc

import pytest

from mergekit_reasoning.bench.sandbox.rpc import (
    MESSAGE_CAP,
    ChannelError,
    ChannelTimeout,
    decode,
    encode,
    receive,
    send,
)

PLAIN = [
    0,
    -1,
    10**100,
    0x7FFFFFFFFFFFFFFF,
    1.5,
    -0.0,
    1e-300,
    float("inf"),
    float("-inf"),
    2j,
    1 + 2j,
    -1.5 - 2j,
    "",
    "quote ' \" and \\ and \n",
    "\ud800 lone surrogate",
    "é漢🙂",
    b"",
    b"\x00\xff'",
    True,
    False,
    None,
    (),
    (1,),
    [],
    [1, [2, (3, "x")]],
    {},
    {1: "a", (1, 2): [3], "k": {"n": None}},
    set(),
    {1, "b", (2,)},
]


def _stable_id(value) -> str:
    """repr, with sets written in sorted order: a set's repr follows string hashing, which differs per process."""
    if isinstance(value, (set, frozenset)) and value:
        return "{" + ", ".join(sorted(map(repr, value))) + "}"
    return repr(value)


@pytest.mark.parametrize("value", PLAIN, ids=_stable_id)
def test_plain_data_round_trips_with_its_types(value):
    back = decode(encode(value))
    assert back == value and type(back) is type(value)
    assert repr(back) == repr(value)  # -0.0 keeps its sign, bool stays bool, tuple stays tuple


def test_nan_round_trips():
    assert math.isnan(decode(encode(float("nan"))))


HOSTILE = [
    b"__import__('os').system('echo hi')",
    b"(lambda: 5)()",
    b"5 if 1 else 0",
    b"x",
    b"True.real",
    b"[1][0]",
    b"...",
    b"[[...]]",
    b"{**{}}",
    b"f'{1}'",
    b"1 + 1",
    b"'a' + 'b'",
    b"-True",
    b"-'x'",
    b"not 0",
    b"set([1])",
    b"frozenset()",
    b"{[]: 1}",
    b"{[1]}",
    b"",
    b"(",
    b"\x00",
    b"\xff",
    "'é'".encode(),
    b"[" * 100 + b"]" * 100,
    b"[" * 100000,
    b"9" * 20000,
    b"[" + b"0," * 40000 + b"]",
    b"lambda: 0",
    b"yield 1",
    b"await x",
]


@pytest.mark.parametrize("data", HOSTILE, ids=lambda d: repr(d[:24]))
def test_anything_but_plain_data_is_a_channel_error(data):
    with pytest.raises(ChannelError):
        decode(data)


def test_a_value_at_the_cap_decodes_in_bounded_memory():
    data = b"[" + b"0," * ((MESSAGE_CAP - 2) // 2) + b"]"
    tracemalloc.start()
    try:
        assert len(decode(data)) == (MESSAGE_CAP - 2) // 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_what_cannot_be_written_as_plain_data_fails_on_the_senders_side():
    deep = []
    for _ in range(10000):
        deep = [deep]
    with pytest.raises(RecursionError):
        encode(deep)
    with pytest.raises(ValueError):
        encode(10**5000)  # past Python's limit on int to text
    with pytest.raises(ChannelError):
        decode(encode(object()))


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_messages_arrive_whole_and_in_order(pipe):
    r, w = pipe
    one, two = encode((1, "return", [1, 2])), encode((2, "return", "x" * 1000))
    os.write(w, len(one).to_bytes(4, "big") + one + len(two).to_bytes(4, "big")[:2])  # two arrives in pieces
    os.write(w, len(two).to_bytes(4, "big")[2:] + two)
    assert receive(r, MESSAGE_CAP) == one
    assert receive(r, MESSAGE_CAP) == two


def test_a_header_over_the_cap_is_refused_before_reading_the_body(pipe):
    r, w = pipe
    os.write(w, (MESSAGE_CAP + 1).to_bytes(4, "big"))
    with pytest.raises(ChannelError, match="over the cap"):
        receive(r, MESSAGE_CAP)


def test_end_of_file_and_silence_are_channel_errors(pipe):
    r, w = pipe
    os.set_blocking(r, False)
    with pytest.raises(ChannelTimeout):
        receive(r, MESSAGE_CAP, deadline=time.monotonic() + 0.05)
    os.close(w)
    with pytest.raises(ChannelError, match="went away"):
        receive(r, MESSAGE_CAP, deadline=time.monotonic() + 5)


def test_a_reader_that_never_reads_times_the_sender_out(pipe):
    r, w = pipe
    os.set_blocking(w, False)
    with pytest.raises(ChannelTimeout):
        send(w, b"0" * (1 << 20), deadline=time.monotonic() + 0.05)  # more than a pipe holds
