"""Bencode, the wire format of the RTPEngine ng control protocol.

Why a hand-written codec: the ng protocol needs only four types (byte strings,
integers, lists, dictionaries), and the replies come over UDP from a process we
do not control, so decoding must treat every datagram as untrusted. This codec
therefore guarantees that :func:`decode` raises nothing but :class:`BencodeError`
(a :class:`ValueError`) whatever bytes it is given, with a message that says
what was wrong and where, and that it never recurses without bound.

Encoding follows the BitTorrent rules (dictionary keys sorted as raw bytes).
Decoding is strict where strictness costs nothing (no leading zeros, no ``-0``,
no duplicate keys, no trailing bytes) but accepts unsorted dictionary keys,
because rtpengine writes its keys in insertion order (``d3:sdp...6:result2:oke``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "BValue",
    "BencodeError",
    "decode",
    "encode",
]

#: Deepest nesting of lists/dictionaries accepted; ng messages nest about 8 deep
#: (a ``query`` reply), so 64 is generous while keeping recursion far from
#: Python's limit.
MAX_DEPTH = 64

#: Longest integer literal accepted (digits, without sign). 64-bit values need
#: at most 20; the cap keeps ``int()`` cheap on hostile input.
MAX_INT_DIGITS = 64

BValue = bytes | int | list["BValue"] | dict[bytes, "BValue"]
"""A decoded bencode value: byte strings stay bytes, dictionary keys are bytes."""

_DIGITS = frozenset(b"0123456789")


class BencodeError(ValueError):
    """Malformed bencode input, or a value that bencode cannot represent."""


# --------------------------------------------------------------------------- encode


def encode(value: object) -> bytes:
    """Encode ``value`` as bencode.

    Accepted: ``bytes``/``bytearray``/``memoryview``, ``str`` (as UTF-8), ``int``
    (not ``bool``: bencode has no booleans, and silently sending ``i1e`` for
    ``True`` hides bugs), sequences (``list``/``tuple``) and mappings whose
    keys are ``str`` or ``bytes``. Anything else raises :class:`BencodeError`.
    """
    out: list[bytes] = []
    _encode_into(value, out, 0)
    return b"".join(out)


def _encode_into(value: object, out: list[bytes], depth: int) -> None:
    """Append the encoding of ``value`` to ``out``; depth guards cycles."""
    if depth > MAX_DEPTH:
        raise BencodeError(f"cannot encode: nesting deeper than {MAX_DEPTH} (a cycle?)")
    if isinstance(value, bool):
        raise BencodeError("cannot encode bool: bencode has no booleans, use an int or a flag")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview | str):
        raw = _as_bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, Mapping):
        _encode_mapping(value, out, depth)
    elif isinstance(value, Sequence):
        out.append(b"l")
        for item in value:
            _encode_into(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot encode value of type {type(value).__name__}")


def _encode_mapping(value: Mapping[object, object], out: list[bytes], depth: int) -> None:
    """Encode a mapping with keys sorted as raw bytes, as bencode requires."""
    items: dict[bytes, object] = {}
    for key, item in value.items():
        if not isinstance(key, bytes | str):
            raise BencodeError(
                f"cannot encode dictionary key of type {type(key).__name__}: "
                "keys must be str or bytes"
            )
        raw_key = _as_bytes(key)
        if raw_key in items:
            raise BencodeError(f"duplicate dictionary key {raw_key!r} after encoding")
        items[raw_key] = item
    out.append(b"d")
    for raw_key in sorted(items):
        out.append(b"%d:" % len(raw_key))
        out.append(raw_key)
        _encode_into(items[raw_key], out, depth + 1)
    out.append(b"e")


def _as_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    """Byte string form of a text or bytes-like value (text as UTF-8)."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise BencodeError(f"cannot encode string as UTF-8: {exc}") from None
    return bytes(value)


# --------------------------------------------------------------------------- decode


def decode(data: bytes | bytearray | memoryview) -> BValue:
    """Decode exactly one bencode value that fills all of ``data``.

    Raises :class:`BencodeError` for every malformed input: empty, truncated,
    bad integer or length, unknown type byte, non-string dictionary key,
    duplicate key, nesting deeper than :data:`MAX_DEPTH`, or trailing bytes.
    Passing something that is not bytes-like is a programming error and raises
    :class:`TypeError`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode() needs bytes, not {type(data).__name__}")
    buf = bytes(data)
    if not buf:
        raise BencodeError("empty input: expected a bencode value")
    value, end = _Decoder(buf).parse_value(0, 0)
    if end != len(buf):
        raise BencodeError(
            f"trailing bytes after the value at offset {end} ({len(buf) - end} bytes)"
        )
    return value


class _Decoder:
    """Recursive-descent decoder over one buffer; every method returns (value, next offset)."""

    def __init__(self, buf: bytes) -> None:
        self._buf = buf

    def parse_value(self, pos: int, depth: int) -> tuple[BValue, int]:
        """Decode the value starting at ``pos``, dispatching on its first byte."""
        if pos >= len(self._buf):
            raise BencodeError(f"truncated input: expected a value at offset {pos}")
        lead = self._buf[pos]
        if lead == ord("i"):
            return self.parse_int(pos)
        if lead in _DIGITS:
            return self.parse_bytes(pos)
        if lead in (ord("l"), ord("d")):
            if depth >= MAX_DEPTH:
                raise BencodeError(
                    f"nesting too deep: more than {MAX_DEPTH} levels at offset {pos}"
                )
            if lead == ord("l"):
                return self.parse_list(pos, depth)
            return self.parse_dict(pos, depth)
        raise BencodeError(
            f"unexpected byte {bytes([lead])!r} at offset {pos}: expected i, l, d or a digit"
        )

    def parse_int(self, pos: int) -> tuple[int, int]:
        """Decode ``i<digits>e``; rejects ``-0``, leading zeros and empty digits."""
        end = self._buf.find(b"e", pos + 1, pos + 3 + MAX_INT_DIGITS)
        if end < 0:
            if self._buf.find(b"e", pos + 1) < 0:
                raise BencodeError(f"truncated integer at offset {pos}: no closing 'e'")
            raise BencodeError(
                f"bad integer at offset {pos}: not closed by 'e' within {MAX_INT_DIGITS} digits"
            )
        text = self._buf[pos + 1 : end]
        digits = text[1:] if text.startswith(b"-") else text
        if not digits or not _DIGITS.issuperset(digits):
            raise BencodeError(
                f"bad integer {text!r} at offset {pos}: expected an optional '-' and digits"
            )
        if len(digits) > MAX_INT_DIGITS:
            raise BencodeError(f"bad integer at offset {pos}: more than {MAX_INT_DIGITS} digits")
        if (digits.startswith(b"0") and len(digits) > 1) or text == b"-0":
            raise BencodeError(f"bad integer {text!r} at offset {pos}: leading zero or -0")
        return int(text), end + 1

    def parse_bytes(self, pos: int) -> tuple[bytes, int]:
        """Decode ``<length>:<bytes>``; the length must fit in what is left."""
        colon = self._buf.find(b":", pos, pos + 1 + MAX_INT_DIGITS)
        if colon < 0:
            if self._buf.find(b":", pos) < 0 and _DIGITS.issuperset(self._buf[pos:]):
                raise BencodeError(f"truncated string length at offset {pos}: no ':'")
            raise BencodeError(f"bad string length at offset {pos}: expected digits then ':'")
        length_text = self._buf[pos:colon]
        if not _DIGITS.issuperset(length_text) or (
            length_text.startswith(b"0") and len(length_text) > 1
        ):
            raise BencodeError(f"bad string length {length_text!r} at offset {pos}")
        length = int(length_text)
        start = colon + 1
        if length > len(self._buf) - start:
            raise BencodeError(
                f"truncated string at offset {pos}: length {length}, "
                f"only {len(self._buf) - start} bytes left"
            )
        return self._buf[start : start + length], start + length

    def parse_list(self, pos: int, depth: int) -> tuple[list[BValue], int]:
        """Decode ``l<values>e``."""
        items: list[BValue] = []
        pos += 1
        while True:
            if pos >= len(self._buf):
                raise BencodeError("truncated list: no closing 'e'")
            if self._buf[pos] == ord("e"):
                return items, pos + 1
            item, pos = self.parse_value(pos, depth + 1)
            items.append(item)

    def parse_dict(self, pos: int, depth: int) -> tuple[dict[bytes, BValue], int]:
        """Decode ``d<key><value>...e``; keys must be strings and unique (any order)."""
        result: dict[bytes, BValue] = {}
        pos += 1
        while True:
            if pos >= len(self._buf):
                raise BencodeError("truncated dictionary: no closing 'e'")
            if self._buf[pos] == ord("e"):
                return result, pos + 1
            if self._buf[pos] not in _DIGITS:
                raise BencodeError(f"dictionary key at offset {pos} is not a string")
            key, pos = self.parse_bytes(pos)
            if key in result:
                # Cut: a key can be as long as the datagram, the message must stay readable.
                raise BencodeError(f"duplicate dictionary key {key[:40]!r} ({len(key)} bytes)")
            result[key], pos = self.parse_value(pos, depth + 1)
