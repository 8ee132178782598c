"""atheris (libFuzzer) harness for the ng-protocol bencode decoder.

The hypothesis tests (tests/test_bencode.py, tests/test_fuzz_wire.py) run in
CI with bounded example counts; this harness is for long, coverage-guided
runs on demand. Run from the repository root, in the project's venv:

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/bencode_fuzz.py -max_total_time=300 fuzz/corpus/bencode

(any libFuzzer flag works; the corpus directory is optional and grows as
new paths are found). A crash leaves `crash-<sha1>` with the input: turn it
into an `@example` of the hypothesis test, fix, and keep the example.

Properties checked on every input: decode() raises nothing but BencodeError,
and whatever decodes re-encodes canonically to a value that decodes the same.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["vagent"]):
    from vagent.services.bencode import BencodeError, decode, encode


def test_one_input(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    canonical = encode(value)
    if decode(canonical) != value or encode(decode(canonical)) != canonical:
        raise AssertionError(f"round trip changed {data!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
