"""Fuzzing the Asterisk config parser `vagent doctor` reads ari.conf and http.conf with.

Its contract (cli/doctor/asterisk_conf.py): `parse_config` never raises, any
byte sequence parses, and `load_config` raises only `ConfigParseError`, when
the file cannot be opened. What is wrong inside a file is an `Issue`.

Inputs: random bytes, a soup of the format's own constructs (templates,
`(+)` additions, block comments, escapes, includes, BOM, CR, NUL, overlong
lines), and real files (the Asterisk samples and the broken variants real
Asterisk was run on) with lines dropped, duplicated and spliced. Includes
stay inside a temporary directory: a fuzzed `#include /...` must not read
the host's files, so `/` and `#` never come from random bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vagent.cli.doctor.asterisk_conf import (
    ConfigFile,
    ConfigParseError,
    load_config,
    parse_config,
    shown,
)
from vagent.cli.doctor.asterisk_model import ari_conf, http_conf

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CONFIGS = Path("/work/shared/asterisk-configs")
INCLUDED = "inc.conf"


def _real_lines() -> list[bytes]:
    files = sorted(CONFIGS.glob("*.conf*")) + sorted(CONFIGS.glob("broken/*"))
    return [line for f in files if f.is_file() for line in f.read_bytes().split(b"\n")]


REAL_LINES = _real_lines()

# Random bytes, made safe: no directive (#) and no path separator (/) from chance.
safe_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"#", b"%").replace(b"/", b"_"))
CONSTRUCTS = [
    b"[general]",
    b"[vagent]",
    b"[tpl](!)",
    b"[user](tpl)",
    b"[user](!,tpl)",
    b"[general](+)",
    b"[general](+type=user)",
    b"[x](+TEMPLATES=include)",
    b"[y](+enabled=^ye)",
    b"[z](missing)",
    b"[broken",
    b"[b](",
    b"[]",
    b"type = user",
    b"type=user",
    b"enabled = yes",
    b"password = CHANGE;ME",
    b"password = a\\;b",
    b"password_format = crypt",
    b"read_only = no",
    b"bindaddr = 127.0.0.1",
    b"bindport = 99999999999999999999",
    b"bindaddr = [::1]:8088",
    b"key += more",
    b"exten => 1,1,NoOp",
    b"\\=x",
    b"\\ ",
    b"=novalue",
    b"novalue",
    b";-- block",
    b"--;",
    b";---",
    b"x = a--; note",
    b";;;",
    b"\xef\xbb\xbf[general]",
    b"enabled = yes\r",
    b"\x00hidden",
    b"\t \x01",
    b"a" * 9000,
    b"#include " + INCLUDED.encode(),
    b'#include "' + INCLUDED.encode() + b'"',
    b"#include <" + INCLUDED.encode() + b">",
    b"#include i*.conf",
    b"#tryinclude not-there.conf",
    b"#include not-there.conf",
    b"#include",
    b"#exec /bin/false",
    b"#frobnicate x",
]
construct_lines = st.sampled_from(CONSTRUCTS) | safe_bytes
real_lines = st.sampled_from(REAL_LINES) if REAL_LINES else safe_bytes
# Only the main file may include, and only inc.conf (which includes nothing):
# a file including itself k times is parsed k**10 times (see the xfail below).
main_files = st.lists(construct_lines | real_lines, max_size=25).map(b"\n".join)
included_files = st.lists(
    st.sampled_from([c for c in CONSTRUCTS if not c.startswith(b"#")]) | safe_bytes | real_lines,
    max_size=10,
).map(lambda lines: b"\n".join(line for line in lines if not line.lstrip().startswith(b"#")))


def _check(config: ConfigFile, main: Path) -> None:
    """What a parse must look like, whatever the input: printable and placed."""
    assert isinstance(config.valid, bool)
    assert config.files[0] == main
    for issue in config.issues:
        assert issue.file in config.files and issue.line >= 1 and issue.message
        shown(issue.message).encode("utf-8")
    for section in config.sections:
        shown(section.name).encode("utf-8")
        for item in section.items:
            shown(item.key).encode("utf-8")
            shown(item.value).encode("utf-8")
            assert item.file in config.files


@FUZZ
@given(st.binary(max_size=300).map(lambda b: b.replace(b"#", b"%").replace(b"/", b"_")))
@example(b"")
@example(b"\n" * 10_000)
@example(b"key = value")  # before any section: the whole file is invalid
@example(b"[general]\n" + b"\\" * 20)
def test_any_bytes_parse(data: bytes) -> None:
    main = Path("/nonexistent-vagent-fuzz/ari.conf")
    _check(parse_config(data, main), main)


@FUZZ
@given(main_files, included_files)
@example(b"[general]\n#include inc.conf\n#include inc.conf", b"[users]\ntype=user")
@example(b";--\n" * 200 + b"[general]", b"")
def test_any_file_with_includes_parses(tmp_path: Path, main: bytes, included: bytes) -> None:
    main_path = tmp_path / "ari.conf"
    main_path.write_bytes(main)
    (tmp_path / INCLUDED).write_bytes(included)
    config = load_config(main_path)
    _check(config, main_path)
    # What doctor builds on the parse must take any parse too.
    http_conf(config)
    ari_conf(config)


def test_a_file_that_cannot_be_opened_is_the_documented_error(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.conf"
    subprocess.run(["mkfifo", str(fifo)], check=True)  # opening it would block: not a file
    loop = tmp_path / "loop.conf"
    loop.symlink_to(loop)
    cases = {
        tmp_path / "missing.conf": "missing",
        tmp_path: "not_a_file",
        fifo: "not_a_file",
        loop: "missing",
        tmp_path / ("x" * 5000): "unreadable",
    }
    for path, reason in cases.items():
        with pytest.raises(ConfigParseError) as caught:
            load_config(path)
        assert caught.value.reason == reason, path.name[:20]


@pytest.mark.xfail(
    strict=True,
    reason="asterisk_conf.py (owned elsewhere): the regular expression of a `[name](+filter)` "
    "header goes to re.compile, which raises RecursionError (not re.error) for '(' nested "
    "a thousand deep, so parse_config raises although it documents that it never does",
)
def test_a_header_filter_that_python_cannot_compile_is_an_issue() -> None:
    data = b"[general]\nenabled = yes\n[general](+" + b"(" * 1000 + b"=x)\n"
    config = parse_config(data, Path("/nonexistent-vagent-fuzz/ari.conf"))
    assert config.issues


@pytest.mark.xfail(
    strict=True,
    reason="asterisk_conf.py (owned elsewhere): includes are re-read at every level up to "
    "MAX_INCLUDE_LEVEL, so a file that includes itself k times is parsed about k**10 times "
    "(k=3: 88573 parses, 9 s; k=4: over a million): `vagent doctor` hangs on it",
)
def test_a_file_that_includes_itself_is_parsed_in_bounded_time(tmp_path: Path) -> None:
    main = tmp_path / "ari.conf"
    main.write_bytes(b"#include ari.conf\n" * 4 + b"[general]\nenabled = yes\n")
    code = "import sys; from pathlib import Path; from vagent.cli.doctor.asterisk_conf import "
    code += "load_config; load_config(Path(sys.argv[1]))"
    try:
        subprocess.run([sys.executable, "-c", code, str(main)], timeout=5, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing did not finish within 5 s")
