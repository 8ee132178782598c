"""Bencode codec: round trips, rtpengine's own framing, and hostile input.

The decoder faces UDP datagrams from outside, so the property that matters
most is fuzzed: whatever the bytes, decode() raises only BencodeError.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vagent.services.bencode import MAX_DEPTH, BencodeError, BValue, decode, encode

# Decoded values: bytes, ints, lists, dicts with bytes keys (what decode returns).
bvalues: st.SearchStrategy[BValue] = st.recursive(
    st.binary(max_size=40) | st.integers(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ encode


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", b"0:"),
        (b"spam", b"4:spam"),
        ("spam", b"4:spam"),
        ("é", b"2:\xc3\xa9"),
        (0, b"i0e"),
        (-42, b"i-42e"),
        (2**70, b"i1180591620717411303424e"),
        ([], b"le"),
        ([b"a", 1, ["b"]], b"l1:ai1el1:bee"),
        ((1, 2), b"li1ei2ee"),
        ({}, b"de"),
        ({"command": "ping"}, b"d7:command4:pinge"),
    ],
)
def test_encode_known_values(value: object, expected: bytes) -> None:
    assert encode(value) == expected


def test_encode_sorts_keys_as_raw_bytes() -> None:
    message = {"sdp": "v=0", "call-id": "c1", "command": "offer", b"B": 1, "a": 2}
    assert encode(message) == b"d1:Bi1e1:ai2e7:call-id2:c17:command5:offer3:sdp3:v=0e"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "bool"),
        (1.5, "float"),
        (None, "NoneType"),
        ({1: b"x"}, "key of type int"),
        ({"a": 1, b"a": 2}, "duplicate"),
        ("\ud800", "UTF-8"),
        ({"set": {1, 2}}, "set"),
    ],
)
def test_encode_rejects_what_bencode_cannot_say(value: object, message: str) -> None:
    with pytest.raises(BencodeError, match=message):
        encode(value)


def test_encode_refuses_cycles() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(BencodeError, match="nesting deeper"):
        encode(loop)


# ------------------------------------------------------------------ decode


def test_decode_rtpengine_reply_with_unsorted_keys() -> None:
    # Captured from rtpengine 10.5: keys in insertion order, not sorted.
    reply = b"d3:sdp4:v=0\n6:result2:oke"
    assert decode(reply) == {b"sdp": b"v=0\n", b"result": b"ok"}


def test_decode_accepts_bytes_like() -> None:
    assert decode(bytearray(b"i7e")) == 7
    assert decode(memoryview(b"2:ab")) == b"ab"


def test_decode_rejects_str_as_a_programming_error() -> None:
    with pytest.raises(TypeError, match="needs bytes"):
        decode("i1e")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"i12", "truncated integer"),
        (b"ie", "bad integer"),
        (b"i-e", "bad integer"),
        (b"i-0e", "-0"),
        (b"i007e", "leading zero"),
        (b"i 1e", "bad integer"),
        (b"i1_000e", "bad integer"),
        (b"i+1e", "bad integer"),
        (b"i" + b"9" * 100 + b"e", "not closed by 'e' within"),
        (b"5:abc", "truncated string"),
        (b"99999999999999999999:x", "truncated string"),
        (b"3", "truncated string length"),
        (b"3x", "bad string length"),
        (b"03:abc", "bad string length"),
        (b"l", "truncated list"),
        (b"li1e", "truncated list"),
        (b"d", "truncated dictionary"),
        (b"d1:a", "truncated input"),
        (b"di1ei2ee", "not a string"),
        (b"d1:ai1e1:ai2ee", "duplicate dictionary key"),
        (b"x", "unexpected byte"),
        (b"i1ei2e", "trailing bytes"),
        (b"4:spam ", "trailing bytes"),
        (b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1), "nesting too deep"),
        (b"l" * 100_000, "nesting too deep"),
        (b"d1:a" * 100_000, "nesting too deep"),
    ],
)
def test_decode_rejects_malformed_input_clearly(data: bytes, message: str) -> None:
    with pytest.raises(BencodeError, match=message):
        decode(data)


def test_decode_accepts_exactly_max_depth() -> None:
    data = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    value = decode(data)
    for _ in range(MAX_DEPTH - 1):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []


def test_bencode_error_is_a_value_error() -> None:
    assert issubclass(BencodeError, ValueError)


# ------------------------------------------------------------------ properties


@FUZZ
@given(bvalues)
def test_round_trip(value: BValue) -> None:
    assert decode(encode(value)) == value


@FUZZ
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_bencode_error(data: bytes) -> None:
    with contextlib.suppress(BencodeError):
        decode(data)


@FUZZ
@given(bvalues, st.data())
def test_decode_mutated_valid_input_raises_only_bencode_error(
    value: BValue, data: st.DataObject
) -> None:
    """Random bytes rarely get past the first byte; mutating valid input goes deeper."""
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    with contextlib.suppress(BencodeError):
        decode(bytes(raw))
