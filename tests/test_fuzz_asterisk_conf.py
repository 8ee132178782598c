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
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vagent.cli.doctor.asterisk_checks import ari_conf_findings, http_conf_findings
from vagent.cli.doctor.asterisk_conf import (
    ConfigFile,
    ConfigParseError,
    load_config,
    parse_config,
    shown,
)
from vagent.cli.doctor.asterisk_model import ari_conf, http_conf
from vagent.services.config import Settings

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
# a file including itself k times is read up to MAX_INCLUDED_LINES lines, too
# slow for hundreds of examples (the bound has its own tests below).
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


def _parsed(data: bytes) -> ConfigFile:
    return parse_config(data, Path("/nonexistent-vagent-fuzz/ari.conf"))


def test_a_header_filter_that_python_cannot_compile_is_an_issue() -> None:
    """Regression: the filter went to re.compile, which raised RecursionError
    (not re.error) for '(' nested a thousand deep, out of parse_config."""
    config = _parsed(b"[general]\nenabled = yes\n[general](+" + b"(" * 1000 + b"=x)\n")
    assert [i.severity for i in config.issues] == ["unverifiable"]
    assert len(config.issues[0].message) < 300  # the filter is clipped, not echoed whole


@pytest.mark.parametrize(
    "expression",
    [
        b"enabled=[[:alpha:]]",  # re.compile warned "Possible nested set" (FutureWarning)
        b"enabled=y*y*y*y*y*y*x",  # re backtracks for hours on the value below
        b"a|enabled=yes",
        b"enabled=y*",
        b"enabled='yes'",
        b"enabled=y\\es",
    ],
)
def test_a_filter_beyond_plain_text_is_assumed_to_match_and_said_so(expression: bytes) -> None:
    """Regression: doctor never compiles file text as a regular expression;
    what it cannot decide is unverifiable, and no warning leaks out."""
    data = b"[general]\nenabled = " + b"y" * 5000 + b"n\n[general](+" + expression + b")\nk=v\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = _parsed(data)
    assert [i.severity for i in config.issues] == ["unverifiable"]
    assert config.valid and config.sections[0].get("k") == "v"


@pytest.mark.parametrize(
    ("expression", "target"),
    [
        (b"", "a"),  # (+) with no filter: the first section of that name
        (b"type=user", "b"),
        (b"type=^use", "b"),
        (b"type=ser$", "b"),
        (b"type=^user$", "b"),
        (b"type=u.er", "b"),
        (b"ty=s", "b"),  # regexec searches: a part of the key or value is enough
        (b"type=user&read_only=no", "c"),  # every expression must match one item
        (b"type=user=ignored", "b"),  # ast_strsep: a second '=' ends the value
        (b"type=^ser", None),
        (b"type=u.ers", None),
        (b"type", None),  # an expression without '=' matches nothing
        (b"TEMPLATES=restrict", "t"),
        (b"type=user&TEMPLATES=include", "t"),
    ],
)
def test_a_plain_filter_picks_the_section_asterisk_does(
    expression: bytes, target: str | None
) -> None:
    data = (
        b"[s](!)\nid = t\ntype = user\n"
        b"[s]\nid = a\n"
        b"[s]\nid = b\ntype = user\n"
        b"[s]\nid = c\ntype = user\nread_only = no\n"
        b"[s](+" + expression + b")\nadded = 1\n"
    )
    config = _parsed(data)
    added = [s.get("id") for s in config.sections if s.get("added")]
    assert added == ([target] if target else [])
    assert config.valid == (target is not None)
    assert all(i.severity == "invalid" for i in config.issues)


def test_a_file_that_includes_itself_is_parsed_in_bounded_time(tmp_path: Path) -> None:
    """Regression: includes were re-read at every level up to MAX_INCLUDE_LEVEL, so a
    file that includes itself k times was parsed about k**10 times (k=3: 88573 parses,
    9 s; k=4: over a million): `vagent doctor` hung on it."""
    main = tmp_path / "ari.conf"
    main.write_bytes(b"#include ari.conf\n" * 4 + b"[general]\nenabled = yes\n")
    code = "import sys; from pathlib import Path; from vagent.cli.doctor.asterisk_conf import "
    code += "load_config; load_config(Path(sys.argv[1]))"
    try:
        subprocess.run([sys.executable, "-c", code, str(main)], timeout=5, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing did not finish within 5 s")


@pytest.mark.parametrize("copies", [2, 3, 8])
def test_a_self_include_is_read_like_asterisk_until_the_bound(tmp_path: Path, copies: int) -> None:
    """Asterisk reads a self-including file at every level up to 10: with two copies,
    2**11 - 1 reads (doctor does the same); with more, doctor stops at its bound, says
    so once, and the findings stay one readable line."""
    main = tmp_path / "ari.conf"
    main.write_bytes(b"#include ari.conf\n" * copies + b"[general]\nenabled = yes\n")
    config = load_config(main)
    bounded = [i for i in config.issues if i.severity == "unverifiable"]
    if copies == 2:
        assert len(config.files) == 2**11 - 1 and bounded == []
    else:
        assert len(bounded) == 1 and "includes expand past" in bounded[0].message
    assert config.valid
    (tmp_path / "http.conf").write_bytes(main.read_bytes().replace(b"ari.conf", b"http.conf"))
    settings = Settings(asterisk_config_dir=tmp_path)
    findings = ari_conf_findings(settings) + http_conf_findings(settings)
    assert findings and all(len(f.output) < 2000 for f in findings)
