"""doctor's Asterisk config checker against what real Asterisk 22.10.1 did.

The truth-table tests read ../shared/asterisk-configs/variant-results.json (one
real Asterisk run per broken variant: HTTP statuses, `ari show users`, ...)
and hold the checker's prediction against every status recorded there.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vagent.cli.doctor import asterisk_checks, asterisk_model
from vagent.cli.doctor.asterisk_checks import CHECKS, ari_conf_findings, http_conf_findings
from vagent.cli.doctor.asterisk_conf import (
    ConfigFile,
    ConfigParseError,
    ast_true,
    load_config,
    parse_config,
    shown,
)
from vagent.cli.doctor.asterisk_model import ari_conf, http_conf, predict
from vagent.cli.doctor.model import DoctorContext, Finding, exit_code
from vagent.services.config import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "asterisk-configs"
RESULTS: dict[str, Any] = json.loads((SHARED / "variant-results.json").read_text())
VARIANTS = sorted(RESULTS)
PASSWORD = "CHANGEME"
# Every password written in a variant file, plain or hashed: none may reach a finding.
FILE_SECRETS = ("CHANGEME", "FIRSTVALUE", "SECONDSECTION", "CHANGE;ME", "$6$1z8CqJ0")


def variant_dir(tmp_path: Path, name: str) -> Path:
    """The lab config with a variant's file(s) swapped in, as the lab did it."""
    config_dir = tmp_path / "asterisk"
    config_dir.mkdir()
    shutil.copy(SHARED / "lab-http.conf", config_dir / "http.conf")
    shutil.copy(SHARED / "lab-ari.conf", config_dir / "ari.conf")
    for target, source in RESULTS[name]["files"].items():
        shutil.copy(SHARED / "broken" / source, config_dir / target)
    for removed in RESULTS[name]["removed"]:
        (config_dir / removed).unlink()
    return config_dir


def make_settings(config_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ari_url": "http://127.0.0.1:8088",
        "ari_user": "vagent",
        "ari_password": PASSWORD,
        "asterisk_config_dir": config_dir,
    }
    values.update(overrides)
    return Settings(**values)


def findings_for(settings_: Settings) -> list[Finding]:
    return http_conf_findings(settings_) + ari_conf_findings(settings_)


def by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


def parse(text: str | bytes, name: str = "test.conf", config_dir: Path | None = None) -> ConfigFile:
    data = text.encode() if isinstance(text, str) else text
    return parse_config(data, Path("/cfg") / name, config_dir or Path("/cfg"))


def credentials(label: str) -> tuple[str, str | None]:
    """variant-results.json labels: `no auth` or user:'python repr of the password'."""
    if label == "no auth":
        return "", None
    user, _, quoted = label.partition(":")
    return user, ast.literal_eval(quoted)


def status_of(result: dict[str, Any] | str) -> int | None:
    """A recorded status; None for connection refused."""
    if isinstance(result, str):  # the websocket line, e.g. "HTTP/1.1 101 Switching Protocols"
        match = re.match(r"HTTP/1\.1 (\d+)", result)
        return int(match.group(1)) if match else None
    return result.get("status")


# --- the parser ----------------------------------------------------------------------


def test_sections_items_lines_and_arrow() -> None:
    config = parse("[general]\nenabled = yes\n\n[vagent]\ntype => user\n  password=  pw  \n")
    assert config.valid and config.issues == []
    assert [(s.name, s.line) for s in config.sections] == [("general", 1), ("vagent", 4)]
    vagent = config.sections[1]
    assert [(i.key, i.value, i.line) for i in vagent.items] == [
        ("type", "user", 5),
        ("password", "pw", 6),
    ]
    assert vagent.items[0].file == Path("/cfg/test.conf")


def test_semicolon_starts_a_comment_anywhere_and_backslash_escapes_it() -> None:
    config = parse(
        "[s]\na = CHANGEME ; rotated\nb = CHANGE;ME\nc = CHANGE\\;ME\nd = x\\;y;z\ne = \\;;\n"
    )
    items = {i.key: i for i in config.sections[0].items}
    assert {k: i.value for k, i in items.items()} == {
        "a": "CHANGEME",
        "b": "CHANGE",
        "c": "CHANGE;ME",
        "d": "x;y",
        "e": ";",
    }
    # a comment glued to the value is how a password gets cut short
    assert [k for k, i in items.items() if i.comment_adjacent] == ["b", "d", "e"]


def test_block_comments_span_lines_and_triple_dash_is_a_plain_comment() -> None:
    config = parse(
        "[s]\na = 1 ;-- inline --; tail\n;-- one\nb = hidden\n--; c = 3\nd = 4 ;--- plain\n"
    )
    assert [(i.key, i.value) for i in config.sections[0].items] == [
        ("a", "1  tail"),
        ("c", "3"),
        ("d", "4"),
    ]


def test_unterminated_block_comment_is_a_warning() -> None:
    config = parse("[s]\n;-- never closed\na = 1\n")
    assert config.valid and config.sections[0].items == []
    assert [(i.line, i.severity) for i in config.issues] == [(2, "warning")]


def test_stray_block_end_hides_the_following_lines_like_asterisk() -> None:
    """`--;` outside a block sends config.c's nesting below zero (from the source)."""
    config = parse("[s]\na = x--; note\nb = 2\n")
    assert [(i.key, i.value) for i in config.sections[0].items] == [("a", "x--; note")]


def test_crlf_and_blanks_are_trimmed() -> None:
    config = parse(b"[s]\r\n\tkey = value \r\n\r\nother=1\r\n")
    assert [(i.key, i.value, i.line) for i in config.sections[0].items] == [
        ("key", "value", 2),
        ("other", "1", 4),
    ]


def test_keys_before_any_section_invalidate_the_whole_file() -> None:
    config = parse("; header\nenabled = yes\n[general]\nbindaddr = 127.0.0.1\n")
    assert not config.valid
    reason = config.invalid_reason
    assert reason is not None and (reason.line, reason.file.name) == (2, "test.conf")
    assert config.sections == []  # Asterisk stops at the error


def test_templates_inheritance_and_last_value_wins() -> None:
    config = parse(
        "[base](!)\ntype = user\nread_only = yes\n"
        "[mid](!,base)\npassword_format = plain\n"
        "[vagent](mid)\nread_only = no\npassword = pw\n"
    )
    base, mid, vagent = config.sections
    assert base.is_template and mid.is_template and not vagent.is_template
    assert mid.templates == ["base"] and vagent.templates == ["mid"]
    assert [(i.key, i.inherited_from) for i in vagent.items] == [
        ("type", "mid"),
        ("read_only", "mid"),
        ("password_format", "mid"),
        ("read_only", None),
        ("password", None),
    ]
    assert vagent.get("read_only") == "no" and vagent.first("read_only") == "yes"
    assert config.category("base") is None  # templates are not sections for readers
    assert config.category("vagent") is vagent


def test_inheriting_from_an_undefined_template_invalidates_the_file() -> None:
    config = parse("[vagent](nosuch)\ntype = user\n")
    assert not config.valid and config.invalid_reason is not None
    assert "nosuch" in config.invalid_reason.message


def test_plus_appends_to_an_existing_section() -> None:
    config = parse("[vagent]\ntype = user\n[other]\na = 1\n[vagent](+)\npassword = pw\n")
    assert [s.name for s in config.sections] == ["vagent", "other"]
    assert config.sections[0].get("password") == "pw"
    assert not parse("[vagent](+)\na = 1\n").valid


def test_duplicate_keys_and_sections_are_all_kept() -> None:
    config = parse("[a]\nk = 1\nK = 2\n[a]\nk = 3\n")
    assert [s.name for s in config.sections] == ["a", "a"]
    first = config.sections[0]
    assert [i.value for i in first.values("k")] == ["1", "2"]
    assert first.get("k") == "2" and first.first("k") == "1"
    assert config.category("A") is first  # readers match names case-insensitively


def test_includes_resolve_in_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "users.conf").write_text("[vagent]\ntype = user\n")
    (tmp_path / "more.conf").write_text("[more]\nk = v\n")
    main = tmp_path / "ari.conf"
    main.write_text('[general]\nenabled = yes\n#include "users.conf"\n#include more.conf\n')
    config = load_config(main, tmp_path)
    assert config.valid
    assert [(s.name, s.file.name) for s in config.sections] == [
        ("general", "ari.conf"),
        ("vagent", "users.conf"),
        ("more", "more.conf"),
    ]
    assert [p.name for p in config.files] == ["ari.conf", "users.conf", "more.conf"]


def test_missing_include_invalidates_but_tryinclude_does_not(tmp_path: Path) -> None:
    config = parse('[general]\n\n#include "gone.conf"\n[backup]\na = 1\n', config_dir=tmp_path)
    assert not config.valid and config.invalid_reason is not None
    assert config.invalid_reason.line == 3
    assert [s.name for s in config.sections] == ["general"]
    assert parse('[general]\n#tryinclude "gone.conf"\n', config_dir=tmp_path).valid


def test_parse_error_inside_an_include_only_stops_that_file(tmp_path: Path) -> None:
    """config.c: an invalid included file is not a missing one (from the source)."""
    (tmp_path / "bad.conf").write_text("[x]\na = 1\n[broken\nb = 2\n")
    config = parse("[top]\n#include bad.conf\nc = 3\n", config_dir=tmp_path)
    assert config.valid
    assert [(i.severity, i.file.name, i.line) for i in config.issues] == [("error", "bad.conf", 3)]
    # after the include, lines go on into the section that was current before it
    assert config.sections[0].get("c") == "3" and config.sections[1].get("b") is None


def test_include_loop_stops_at_ten_levels(tmp_path: Path) -> None:
    """The innermost include fails, and (as above) only that file stops (from the source)."""
    (tmp_path / "loop.conf").write_text("[s]\n#include loop.conf\n")
    config = load_config(tmp_path / "loop.conf", tmp_path)
    assert config.valid
    assert len(config.sections) == 11
    assert [i.severity for i in config.issues] == ["warning", "error"]


def test_exec_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = parse(f"[s]\n#exec /usr/bin/touch {marker}\na = 1\n", config_dir=tmp_path)
    assert not marker.exists()
    assert config.valid and config.sections[0].get("a") == "1"
    assert [(i.severity, i.line) for i in config.issues] == [("unverifiable", 2)]


def test_unknown_directive_and_lines_without_equals_are_skipped() -> None:
    config = parse("[s]\n#frobnicate x\njust words\n= novalue\nk = v\n")
    assert config.valid and config.sections[0].get("k") == "v"
    assert [i.line for i in config.issues] == [2, 3, 4]


def test_any_bytes_parse_and_print(tmp_path: Path) -> None:
    data = (
        b"\xef\xbb\xbf[caf\xe9\xff]\npass\xfeword = p\xe4ss\x00ignored\nk = " + b"x" * 9000 + b"\n"
    )
    config = parse(data)
    section = config.sections[0]
    assert section.items[0].value.encode("utf-8", "surrogateescape") == b"p\xe4ss"
    assert [i.line for i in config.issues] == [3]  # the 9000-byte line is skipped
    json.dumps(shown(section.name))  # printable
    assert shown(section.name) == "caf\\xe9\\xff"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parser_never_raises(data: bytes) -> None:
    config = parse(data)
    json.dumps([shown(s.name) for s in config.sections] + [i.message for i in config.issues])


def test_open_errors_are_config_parse_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigParseError) as missing:
        load_config(tmp_path / "nope.conf")
    assert missing.value.reason == "missing"
    with pytest.raises(ConfigParseError) as directory:
        load_config(tmp_path)
    assert directory.value.reason == "not_a_file"
    locked = tmp_path / "locked.conf"
    locked.write_text("[s]\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigParseError) as permission:
        load_config(locked)
    assert permission.value.reason == "permission"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("yes", True), ("On", True), ("1", True), ("t", True), ("no", False), ("", False)],
)
def test_ast_true(value: str, expected: bool) -> None:
    assert ast_true(value) is expected


# --- the truth table -----------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_prediction_matches_every_status_real_asterisk_answered(
    tmp_path: Path, variant: str
) -> None:
    result = RESULTS[variant]
    config_dir = variant_dir(tmp_path, variant)
    checked = 0
    for label, answer in result["GET /ari/asterisk/info"].items():
        user, password = credentials(label)
        assert predict(config_dir, user, password).status("GET") == status_of(answer), label
        checked += 1
    ours = predict(config_dir, "vagent", PASSWORD)
    assert ours.status("POST") == status_of(result["POST /ari/bridges as vagent:CHANGEME"])
    ws = result["websocket /ari/events?app=cfgprobe as vagent:CHANGEME"]
    assert ours.status("WS") == status_of(ws)
    assert checked >= 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_matches_asterisk_cli(tmp_path: Path, variant: str) -> None:
    """`http show status`, `ari show status` and `ari show users`, as the model sees them."""
    result = RESULTS[variant]
    config_dir = variant_dir(tmp_path, variant)
    http = http_conf(asterisk_model._load(config_dir, "http.conf"))
    bound = re.search(r"Server Enabled and Bound to (\S+):(\d+)", result["http show status"])
    assert http.listening == (bound is not None)
    if bound:
        assert (http.host, http.bound_port) == (bound.group(1), int(bound.group(2)))

    ari = ari_conf(asterisk_model._load(config_dir, "ari.conf"))
    status = result["ari show status"]
    assert (ari.general is not None) == status.startswith("ARI Status:")
    assert ari.served == ("Enabled: Yes" in status)
    rows = [line.split() for line in result["ari show users"].splitlines()[2:]]
    assert {row[-1]: row[0] == "Yes" for row in rows} == {
        name: user.read_only for name, user in ari.users.items()
    }


NON_PASS: dict[str, set[tuple[str, str]]] = {
    "00": set(),
    "01": {("http_conf.enabled", "fail")},
    "02": {("http_conf.bind", "fail")},
    "03": {("http_conf.file", "fail")},
    "04": {("ari_conf.enabled", "fail")},
    "05": {("ari_conf.password", "fail")},
    "06": {("ari_conf.user", "fail")},
    "07": set(),
    "08": set(),
    "09": {("ari_conf.file", "fail")},
    "10": set(),
    "11": {("ari_conf.duplicate_key", "warn")},
    "12": set(),
    "13": set(),
    "14": {("ari_conf.read_only", "fail")},
    "15": {("ari_conf.password_format", "fail")},
    "16": {("ari_conf.duplicate_section", "fail")},
    "17": {("ari_conf.file", "fail")},
}
# Variants in which Asterisk loads vagent with the password CHANGEME: a well-known default.
DEFAULT_PASSWORD_FLAGGED = {"00", "01", "02", "03", "04", "07", "08", "10", "11", "12", "13", "14"}


def test_the_expectations_cover_every_variant() -> None:
    assert sorted(NON_PASS) == [v[:2] for v in VARIANTS]


@pytest.mark.parametrize("variant", VARIANTS)
def test_findings_per_variant(tmp_path: Path, variant: str) -> None:
    number = variant[:2]
    findings = findings_for(make_settings(variant_dir(tmp_path, variant)))
    non_pass = {(f.id, f.status) for f in findings if f.status != "pass"}
    expected = set(NON_PASS[number])
    if number in DEFAULT_PASSWORD_FLAGGED:
        expected.add(("ari_conf.password_default", "fail"))
    assert non_pass == expected
    ids = [f.id for f in findings]
    assert len(ids) == len(set(ids))
    for finding in findings:
        assert finding.id.split(".")[0] in ("http_conf", "ari_conf")
        assert finding.runbook == "asterisk-config.md"
        assert "\n" not in finding.fix
        assert bool(finding.fix) == (finding.status != "pass")
        json.dumps(finding.as_json())
    # a structurally working variant gets a password check (it matches VAGENT_ARI_PASSWORD)
    if number in ("00", "07", "08", "10", "11", "12", "13"):
        assert by_id(findings)["ari_conf.password_match"].status == "pass"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_finding_carries_a_password(tmp_path: Path, variant: str) -> None:
    findings = findings_for(make_settings(variant_dir(tmp_path, variant)))
    text = json.dumps([f.as_json() for f in findings])
    for secret in FILE_SECRETS:
        assert secret.lower() not in text.lower()
    # built without them in the first place: the redaction safety net never had to act
    assert asterisk_checks.REDACTED not in text


# --- particular rules ---------------------------------------------------------------


def test_a_semicolon_cutting_the_password_is_explained(tmp_path: Path) -> None:
    config_dir = variant_dir(tmp_path, "13-ari-comment-tail-and-semicolon")
    intended = by_id(
        findings_for(make_settings(config_dir, ari_user="semi", ari_password="CHANGE;ME"))
    )
    assert intended["ari_conf.password_semicolon"].status == "warn"
    assert "\\;" in intended["ari_conf.password_semicolon"].fix
    match = intended["ari_conf.password_match"]
    assert match.status == "fail" and "`;`" in match.output and "ari.conf:13" in match.output

    as_read = by_id(findings_for(make_settings(config_dir, ari_user="semi", ari_password="CHANGE")))
    assert as_read["ari_conf.password_match"].status == "pass"

    escaped = by_id(
        findings_for(make_settings(config_dir, ari_user="escaped", ari_password="CHANGE;ME"))
    )
    assert escaped["ari_conf.password_match"].status == "pass"
    assert "ari_conf.password_semicolon" not in escaped


def test_wrong_password_fails_without_showing_either(tmp_path: Path) -> None:
    config_dir = variant_dir(tmp_path, "00-baseline (lab config, password CHANGEME)")
    findings = findings_for(make_settings(config_dir, ari_password="s3cret-Elsewhere"))
    match = by_id(findings)["ari_conf.password_match"]
    assert match.status == "fail"
    assert match.output == "VAGENT_ARI_PASSWORD does not match ari.conf's password for user vagent"
    assert "s3cret" not in json.dumps([f.as_json() for f in findings])


def test_unset_password_warns(tmp_path: Path) -> None:
    config_dir = variant_dir(tmp_path, "00-baseline (lab config, password CHANGEME)")
    finding = by_id(findings_for(make_settings(config_dir, ari_password=None)))
    assert finding["ari_conf.password_match"].status == "warn"


def test_crypt_hash_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = variant_dir(tmp_path, "07-ari-password-crypt")
    hashed = load_config(config_dir / "ari.conf").sections[1].get("password")
    assert hashed is not None
    wrong = by_id(findings_for(make_settings(config_dir, ari_password=hashed)))
    assert wrong["ari_conf.password_match"].status == "fail"
    monkeypatch.setattr(asterisk_model, "_crypt_function", lambda: None)
    unknown = by_id(findings_for(make_settings(config_dir)))
    assert unknown["ari_conf.password_match"].status == "unknown"
    assert unknown["ari_conf.password_default"].status == "unknown"
    assert all(f.fix for f in unknown.values() if f.status != "pass")
    assert predict(config_dir, "vagent", PASSWORD).user_accepted is None


def test_strong_plain_password_passes(tmp_path: Path) -> None:
    config_dir = variant_dir(tmp_path, "00-baseline (lab config, password CHANGEME)")
    strong = "Zq7-long-random-3f9a"
    ari = config_dir / "ari.conf"
    ari.write_text(ari.read_text().replace("CHANGEME", strong))
    findings = findings_for(make_settings(config_dir, ari_password=strong))
    assert {f.id for f in findings if f.status != "pass"} == set()
    assert exit_code(findings) == 0


@pytest.mark.parametrize(
    ("user", "expected"),
    [("user-defaults", "template"), ("Vagent", "case-sensitive"), ("nobody", "no [nobody]")],
)
def test_user_that_is_not_a_user(tmp_path: Path, user: str, expected: str) -> None:
    config_dir = variant_dir(tmp_path, "10-ari-template")
    finding = by_id(findings_for(make_settings(config_dir, ari_user=user)))["ari_conf.user"]
    assert finding.status == "fail" and expected in finding.output and "401" in finding.output


def test_duplicate_section_drops_other_users_too(tmp_path: Path) -> None:
    config_dir = variant_dir(tmp_path, "16-ari-duplicate-section")
    findings = by_id(findings_for(make_settings(config_dir, ari_user="other")))
    assert findings["ari_conf.duplicate_section"].status == "fail"
    assert "ari.conf:5" in findings["ari_conf.duplicate_section"].output


def write(config_dir: Path, name: str, text: str) -> None:
    config_dir.mkdir(exist_ok=True)
    (config_dir / name).write_text(text)


LAB_ARI = (SHARED / "lab-ari.conf").read_text()
LAB_HTTP = (SHARED / "lab-http.conf").read_text()


@pytest.mark.parametrize(
    ("ari_text", "message"),
    [
        (LAB_ARI.replace("[general]", "[General]"), "lower case"),
        (LAB_ARI.replace("pretty = no", "prety = no"), "`prety`"),
        (LAB_ARI + "\n[general]\nenabled = yes\n", "2 times"),
        (LAB_ARI.split("[vagent]")[0].replace("[general]", "[misc]"), "no [general]"),
    ],
)
def test_ari_general_problems_mean_404(tmp_path: Path, ari_text: str, message: str) -> None:
    """From the Asterisk source: sorcery needs exactly one [general] of known options."""
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", LAB_HTTP)
    write(config_dir, "ari.conf", ari_text)
    finding = by_id(findings_for(make_settings(config_dir)))["ari_conf.general"]
    assert finding.status == "fail" and message in finding.output and "404" in finding.output
    assert predict(config_dir, "vagent", PASSWORD).status() == 404


def test_unknown_user_option_rejects_the_user(tmp_path: Path) -> None:
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", LAB_HTTP)
    write(config_dir, "ari.conf", LAB_ARI.replace("read_only = no", "readonly = no"))
    finding = by_id(findings_for(make_settings(config_dir)))["ari_conf.user"]
    assert finding.status == "fail" and "`readonly`" in finding.output
    assert predict(config_dir, "vagent", PASSWORD).status() == 401


@pytest.mark.parametrize(
    ("http_text", "ari_url", "status", "text"),
    [
        (LAB_HTTP, None, "warn", "http://127.0.0.1:8088"),
        (LAB_HTTP, "http://127.0.0.1:8089", "fail", "port 8089"),
        (LAB_HTTP, "http://127.0.0.1", "fail", "port 80,"),
        (LAB_HTTP, "http://10.1.2.3:8088", "fail", "listens only on 127.0.0.1"),
        (LAB_HTTP, "http://localhost:8088/ari", "pass", "matches"),
        (LAB_HTTP, "http://pbx.example:8088", "pass", "not compared"),
        (LAB_HTTP.replace("127.0.0.1", "0.0.0.0"), "http://10.1.2.3:8088", "pass", "matches"),
        (LAB_HTTP.replace("127.0.0.1", "[::1]:8090"), "http://[::1]:8090", "pass", "matches"),
        (
            LAB_HTTP.replace("prefix =", "prefix = asterisk"),
            "http://127.0.0.1:8088",
            "fail",
            "/asterisk/ari",
        ),
        (
            LAB_HTTP.replace("prefix =", "prefix = asterisk"),
            "http://127.0.0.1:8088/asterisk",
            "pass",
            "matches",
        ),
        (LAB_HTTP, "https://127.0.0.1:8089", "fail", "tlsenable"),
        (LAB_HTTP + "tlsenable = yes\n", "https://127.0.0.1:8089", "pass", "matches"),
    ],
)
def test_ari_url_must_reach_the_http_server(
    tmp_path: Path, http_text: str, ari_url: str | None, status: str, text: str
) -> None:
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", http_text)
    write(config_dir, "ari.conf", LAB_ARI)
    finding = by_id(findings_for(make_settings(config_dir, ari_url=ari_url)))["http_conf.ari_url"]
    assert (finding.status, text in finding.output) == (status, True), finding.output


def test_ari_url_credentials_are_never_shown(tmp_path: Path) -> None:
    config_dir = variant_dir(tmp_path, "00-baseline (lab config, password CHANGEME)")
    url = "http://vagent:hunter2-secret@127.0.0.1:9999"
    findings = findings_for(make_settings(config_dir, ari_url=url))
    assert by_id(findings)["http_conf.ari_url"].status == "fail"
    assert "hunter2" not in json.dumps([f.as_json() for f in findings])


def test_tls_is_observed_not_failed(tmp_path: Path) -> None:
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", LAB_HTTP + "tlsenable = yes\ntlsbindaddr = 0.0.0.0:8443\n")
    write(config_dir, "ari.conf", LAB_ARI)
    tls = by_id(findings_for(make_settings(config_dir)))["http_conf.tls"]
    assert tls.status == "pass" and "0.0.0.0:8443" in tls.output


def test_http_second_general_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", LAB_HTTP + "[general]\nbindport = 9999\n")
    write(config_dir, "ari.conf", LAB_ARI)
    findings = by_id(findings_for(make_settings(config_dir)))
    assert findings["http_conf.general"].status == "warn"
    assert findings["http_conf.ari_url"].status == "pass"  # still 8088: the first wins


def test_bad_bindport_falls_back_to_8088(tmp_path: Path) -> None:
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", LAB_HTTP.replace("bindport = 8088", "bindport = http"))
    write(config_dir, "ari.conf", LAB_ARI)
    findings = by_id(findings_for(make_settings(config_dir)))
    assert findings["http_conf.bind"].status == "warn"
    assert findings["http_conf.ari_url"].status == "pass"


def test_non_utf8_config_does_not_crash(tmp_path: Path) -> None:
    config_dir = tmp_path / "asterisk"
    write(config_dir, "http.conf", LAB_HTTP)
    ari = LAB_ARI.encode().replace(b"CHANGEME", b"p\xe4ss\xff-long")
    (config_dir / "ari.conf").write_bytes(ari)
    findings = by_id(findings_for(make_settings(config_dir)))
    assert findings["ari_conf.password"].status == "pass"
    assert findings["ari_conf.password_match"].status == "fail"
    json.dumps([f.as_json() for f in findings.values()])

    twice = b"[caf\xe9]\ntype = user\npassword = x\n"
    (config_dir / "ari.conf").write_bytes(ari + twice + twice)
    findings = by_id(findings_for(make_settings(config_dir)))
    duplicate = findings["ari_conf.duplicate_section"]
    assert duplicate.status == "fail" and "[caf\\xe9]" in duplicate.output
    json.dumps([f.as_json() for f in findings.values()])


def test_missing_config_dir_warns(tmp_path: Path) -> None:
    settings_ = make_settings(tmp_path / "no-asterisk-here")
    findings = asyncio.run(run_all(DoctorContext(settings_, timeout_s=2.0)))
    assert [(f.id, f.status) for f in findings] == [
        ("http_conf.file", "warn"),
        ("ari_conf.file", "warn"),
    ]
    assert "is Asterisk installed here? set VAGENT_ASTERISK_CONFIG_DIR" in findings[0].output
    assert exit_code(findings) == 1


async def run_all(ctx: DoctorContext) -> list[Finding]:
    assert [c.id for c in CHECKS] == ["http_conf", "ari_conf"]
    results = await asyncio.gather(*(check.run(ctx) for check in CHECKS))
    return [f for group in results for f in group]


def test_empty_config_dir_warns_but_lone_missing_file_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert {f.status for f in findings_for(make_settings(empty))} == {"warn"}
    only_ari = tmp_path / "only-ari"
    write(only_ari, "ari.conf", LAB_ARI)
    http = by_id(http_conf_findings(make_settings(only_ari)))["http_conf.file"]
    assert http.status == "fail" and "nothing listens" in http.output


def test_unreadable_file_says_how_to_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = variant_dir(tmp_path, "00-baseline (lab config, password CHANGEME)")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    findings = findings_for(make_settings(config_dir))
    assert [(f.id, f.status) for f in findings] == [
        ("http_conf.file", "warn"),
        ("ari_conf.file", "warn"),
    ]
    assert "root or the asterisk group" in findings[1].output
