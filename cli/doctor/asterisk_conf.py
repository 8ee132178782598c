"""Asterisk's config file format, read the way Asterisk 22 reads it.

Why not configparser: Asterisk's format only looks like INI. A `;` starts a
comment even in the middle of a value (so `password = CHANGE;ME` is the
password `CHANGE`), `\\;` is a literal semicolon, `[name](!)` is a template
that is not a section at all, `[name](tpl)` copies a template's lines, keys
before the first `[section]` make Asterisk throw the *whole file* away, and a
missing `#include` target does the same. An admin's config that looks fine
but is read differently is exactly what `vagent doctor` must catch, so this
module is a small port of `config_text_file_load` and `process_text_line`
from Asterisk's main/config.c, checked against real Asterisk 22.10.1 runs
(the variants in shared/asterisk-configs).

What it returns is what Asterisk keeps: sections in file order (templates
included, flagged), each item as (key, value, line, file). Duplicate keys
and duplicate section names are all kept: what they *mean* depends on the
module reading the file (ari.conf users drop out on a duplicate section,
http.conf reads only the first `[general]`), so the checks decide.

Bytes, not text: files are split on `\\n` like fgets does, and decoded as
UTF-8 with `surrogateescape`, so any byte sequence parses (nothing raises),
and a value encodes back to the exact bytes Asterisk compares. Use `shown()`
before printing a name or value read from a file.

Only one exception escapes: `ConfigParseError`, when the file itself cannot
be opened (missing, permission denied, not a regular file). Everything
wrong *inside* a file becomes an `Issue` with its file and line.

Includes: Asterisk has no cycle detection. A file that includes itself is
read again at each level until include level 10, where the innermost
`#include` fails ("Maximum Include level (10) exceeded") and only that copy
stops; doctor does the same. But a file that includes itself k times is read
about k**10 times (Asterisk too), so doctor bounds the expansion: each file
is read from disk once per load, and after MAX_INCLUDED_LINES lines brought
in by includes it reads no more and says so (`unverifiable`). Real configs
stay far below the bound, and a runaway one costs a fraction of a second.

`[name](+filter)`: Asterisk matches the filter's `key=value` expressions as
POSIX regular expressions; doctor decides plain text, `.`, `^` and `$`, and
reports anything beyond as unverifiable instead of handing file text to
Python's `re` (see `_Filter`).

Deliberately not done: `#exec` is never run (doctor only reads; the issue
says so), realtime/extconfig mappings are ignored, and brace patterns in
`#include` are not expanded (`*` and `?` are).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MAX_INCLUDE_LEVEL = 10  # config.c MAX_INCLUDE_LEVEL
MAX_LINE_BYTES = 8191  # fgets into char buf[8192]: longer lines are skipped
MAX_NESTED_COMMENTS = 128
MAX_INCLUDED_LINES = 20_000  # doctor's own bound on include expansion, see the module doc
_BOM = b"\xef\xbb\xbf"
_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})

IssueSeverity = Literal["invalid", "error", "warning", "unverifiable"]
"""How Asterisk reacts to an issue:

* invalid: Asterisk rejects the whole file (as if it held nothing at all);
* error: a file pulled in by `#include` stops being read at that line, the
  including file goes on;
* warning: Asterisk logs it and skips the line;
* unverifiable: doctor cannot see what Asterisk would (`#exec`, an include
  doctor may not read).
"""


def ast_true(value: str | None) -> bool:
    """Asterisk's ast_true(): yes/true/y/t/1/on, any case; anything else is false."""
    return value is not None and value.lower() in _TRUE


def shown(text: str) -> str:
    """A name or value from a config file, safe to print or put in JSON
    (undecodable bytes become `\\xNN`)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _strip(text: str) -> str:
    """ast_strip(): Asterisk trims every byte below 33 (blanks, CR, control chars)."""
    start, end = 0, len(text)
    while start < end and ord(text[start]) < 33:
        start += 1
    while end > start and ord(text[end - 1]) < 33:
        end -= 1
    return text[start:end]


class ConfigParseError(Exception):
    """The config file could not be opened at all; nothing inside it was judged.

    `reason` is one of missing, permission, not_a_file, unreadable: the doctor
    checks turn each into a finding with its own fix.
    """

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}{': ' + detail if detail else ''}")


@dataclass(frozen=True)
class Item:
    """One `key = value` line. `inherited_from` names the template it was
    copied from; `comment_adjacent` is True when an unescaped `;` comment
    began right after the value, with no blank between (`password = CHANGE;ME`),
    which is how a semicolon silently cuts a value short."""

    key: str
    value: str
    line: int
    file: Path
    inherited_from: str | None = None
    comment_adjacent: bool = False


@dataclass
class Section:
    """A `[name]` category. Keys are case-insensitive for every reader of
    ari.conf and http.conf, so the lookups are too."""

    name: str
    line: int
    file: Path
    is_template: bool = False
    templates: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)

    def values(self, key: str) -> list[Item]:
        """Every item for `key`, in order (inherited ones first)."""
        wanted = key.lower()
        return [item for item in self.items if item.key.lower() == wanted]

    def get(self, key: str) -> str | None:
        """The value Asterisk ends up with: the last one wins."""
        found = self.values(key)
        return found[-1].value if found else None

    def first(self, key: str) -> str | None:
        """The first value: what sorcery's `type=` criteria look at."""
        found = self.values(key)
        return found[0].value if found else None


@dataclass(frozen=True)
class Issue:
    """Something Asterisk would log (or doctor could not see), with its place."""

    file: Path
    line: int
    severity: IssueSeverity
    message: str

    def where(self) -> str:
        return f"{self.file.name}:{self.line}"


@dataclass
class ConfigFile:
    """What Asterisk read from one config file and everything it includes.

    When `valid` is False Asterisk treats the file as unusable (it logs
    "Contents of config file ... are invalid") and uses none of it; the
    sections parsed before the error are kept here only to explain things.
    """

    path: Path
    sections: list[Section] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not any(issue.severity == "invalid" for issue in self.issues)

    @property
    def invalid_reason(self) -> Issue | None:
        return next((i for i in self.issues if i.severity == "invalid"), None)

    def categories(self, name: str, *, templates: bool = False) -> list[Section]:
        """Sections named `name` (case-insensitive, like ast_category_get)."""
        wanted = name.lower()
        return [
            s
            for s in self.sections
            if s.name.lower() == wanted and (templates or not s.is_template)
        ]

    def category(self, name: str) -> Section | None:
        """The section a module gets from ast_variable_browse: the first
        non-template one with that name. A second `[general]` is ignored."""
        found = self.categories(name)
        return found[0] if found else None


_ERE_OPERATORS = frozenset("\\[](){}*+?|^$'\"")
"""Characters that make a filter more than plain text to POSIX ERE (and to
ast_strsep: quotes and backslashes change how Asterisk splits the filter)."""
_QUOTING = frozenset("\\'\"")
MAX_SHOWN_FILTER = 60


@dataclass(frozen=True)
class _Expression:
    """One `name=value` of a category filter, decided once per header."""

    kind: Literal["templates", "restrict", "match", "assumed"]
    name: Callable[[str], bool] | None = None
    value: Callable[[str], bool] | None = None


@dataclass
class _Filter:
    """config.c does_category_match(): the filter of `[x](+filter)` and of
    template lookups, parsed once and then tried on each section.

    Asterisk hands the two sides of each `name=value` to regcomp (POSIX ERE)
    and keeps a section when, for every expression, one of its items matches
    both. Doctor never compiles that text as a regular expression: Python's
    `re` is not POSIX ERE, raises RecursionError on deep groups, warns on
    `[[`, and can backtrack for ever. It decides the plain part of ERE that
    real filters use (text, `.`, a leading `^`, a trailing `$`) and, for
    anything beyond, assumes the expression matches and says so
    (`unverifiable`), rather than guess a verdict.
    """

    expressions: list[_Expression] = field(default_factory=list)
    counted: int = 0  # expressions Asterisk counts, up to one without '='
    unverifiable: list[str] = field(default_factory=list)

    def matches(self, section: Section) -> bool:
        found = 0
        template_ok = False
        for expression in self.expressions:
            if expression.kind == "templates":
                template_ok = template_ok or section.is_template
            elif expression.kind == "restrict":
                if not section.is_template:
                    return False
                template_ok = True
            elif expression.kind == "match" and not any(
                _item_matches(expression, item) for item in section.items
            ):
                continue
            found += 1
        return found == self.counted and (not section.is_template or template_ok)


def _item_matches(expression: _Expression, item: Item) -> bool:
    assert expression.name is not None and expression.value is not None
    return expression.name(item.key) and expression.value(item.value)


def _plain_ere(pattern: str) -> Callable[[str], bool] | None:
    """A search with the meaning regexec gives `pattern`, when it is plain
    text with `.` (any character), an optional leading `^` and trailing `$`;
    None when it uses anything else. The Python pattern is built here from
    escaped characters, so it has no quantifier and cannot backtrack."""
    anchored = pattern.startswith("^")
    ended = len(pattern) > anchored and pattern.endswith("$")
    body = pattern[int(anchored) : len(pattern) - int(ended)]
    if any(char in _ERE_OPERATORS for char in body):
        return None
    text = "".join("." if char == "." else re.escape(char) for char in body)
    compiled = re.compile(("\\A" if anchored else "") + text + ("\\Z" if ended else ""), re.S)
    return lambda candidate: compiled.search(candidate) is not None


def _category_filter(match: str, sep: str) -> _Filter:
    """Split `match` the way does_category_match() walks it with ast_strsep:
    expressions on `sep`, then name and value on `=` (a second `=` ends the
    value), both stripped; the first expression without `=` ends the filter
    but still counts, so nothing matches it."""
    result = _Filter()
    for expression in match.split(sep):
        result.counted += 1
        parts = expression.split("=", 2)
        if len(parts) < 2:
            break
        name, value = _strip(parts[0]), _strip(parts[1])
        if name == "TEMPLATES":  # another TEMPLATES= value is counted, never found
            if value.lower() in ("include", "restrict"):
                kind: Literal["templates", "restrict"] = (
                    "templates" if value.lower() == "include" else "restrict"
                )
                result.expressions.append(_Expression(kind))
            continue
        name_search, value_search = _plain_ere(name), _plain_ere(value)
        if name_search is None or value_search is None or _QUOTING & set("".join(parts[2:])):
            result.unverifiable.append(expression.strip())
            result.expressions.append(_Expression("assumed"))
            continue
        result.expressions.append(_Expression("match", name_search, value_search))
    return result


def _clipped(text: str) -> str:
    """A filter from a file, printable and short enough for one line of output."""
    text = shown(text)
    return text if len(text) <= MAX_SHOWN_FILTER else text[:MAX_SHOWN_FILTER] + "..."


@dataclass
class _Line:
    """One physical line after comment removal."""

    text: str | None  # None: inside a block comment, nothing to process
    comment_adjacent: bool


def _remove_comments(line: str, depth: int) -> tuple[_Line, int]:
    """The comment loop of config_text_file_load, one line at a time.

    `depth` is the `;-- ... --;` nesting carried from line to line. Quirks
    kept on purpose, because Asterisk has them: `\\;` is a literal `;` (the
    backslash goes) even inside a value; `;---` is a plain comment, not a
    block; and a `--;` outside any block (`x = a--; note`) sends the depth
    below zero, after which Asterisk ignores the following lines.
    """
    keep: str | None = "" if depth == 0 else None
    contiguous = depth == 0  # the rest still belongs to the text kept so far
    adjacent = False
    rest = line

    def passed(text: str) -> None:
        nonlocal keep
        if keep is not None and contiguous:
            keep += text

    while (i := rest.find(";")) >= 0:
        if i > 0 and rest[i - 1] == "\\":  # escaped: drop the backslash, keep the ;
            passed(rest[: i - 1] + ";")
            rest = rest[i + 1 :]
        elif rest[i + 1 : i + 3] == "--" and rest[i + 3 : i + 4] != "-":  # ;-- opens
            if contiguous:
                passed(rest[:i])
                contiguous = False
            if depth < MAX_NESTED_COMMENTS:
                depth += 1
            rest = rest[i + 3 :]
        elif i >= 2 and rest[i - 2 : i] == "--":  # --; closes
            passed(rest[: i + 1])
            depth -= 1
            rest = rest[i + 1 :]
            if depth == 0:
                if keep is None:
                    keep = ""
                contiguous = True
        elif depth == 0:  # a plain comment: the line ends here
            if contiguous:
                before = (keep or "") + rest[:i]
                adjacent = bool(before) and ord(before[-1]) >= 33
                passed(rest[:i])
                contiguous = False
            rest = ""
        else:  # a ; inside a block comment
            passed(rest[: i + 1])
            rest = rest[i + 1 :]
    passed(rest)
    return _Line(keep, adjacent), depth


class _Loader:
    """State shared by a file and everything it includes (one ast_config)."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.result: ConfigFile | None = None
        self.current: Section | None = None  # cfg->current: last appended section
        self.level = 0  # cfg->include_level
        self.included_lines = 0  # read through #include so far, against MAX_INCLUDED_LINES
        self.stopped = False  # the bound was hit: includes are no longer read
        self.files: dict[str, bytes | PermissionError | None] = {}  # each file read once

    @property
    def config(self) -> ConfigFile:
        assert self.result is not None
        return self.result

    def issue(self, path: Path, line: int, severity: IssueSeverity, message: str) -> None:
        self.config.issues.append(Issue(path, line, severity, message))

    def parse(self, data: bytes, path: Path) -> bool:
        """Parse one file's bytes; False when Asterisk would stop reading it."""
        self.level += 1
        self.config.files.append(path)
        section = self.current  # a file (an include too) starts in cfg->current
        depth = 0
        opened_at: list[int] = []
        try:
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            for number, raw in enumerate(lines, start=1):
                raw = raw.split(b"\0", 1)[0]  # C strings end at NUL
                if number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                if len(raw) >= MAX_LINE_BYTES:
                    self.issue(path, number, "warning", "line too long: Asterisk skips it")
                    continue
                was = depth
                cleaned, depth = _remove_comments(raw.decode("utf-8", "surrogateescape"), depth)
                if depth > was:
                    opened_at.append(number)
                if cleaned.text is None:
                    continue
                text = _strip(cleaned.text)
                if not text:
                    continue
                ok, section = self.line(text, number, path, section, cleaned.comment_adjacent)
                if not ok:
                    return False
            if depth > 0:
                start = opened_at[-1] if opened_at else len(lines)
                self.issue(path, start, "warning", "unterminated ;-- block comment")
            return True
        finally:
            self.level -= 1

    def fatal(self, path: Path, line: int, message: str) -> tuple[bool, Section | None]:
        if self.level > 1:
            message += " (Asterisk stops reading this included file here)"
            self.issue(path, line, "error", message)
        else:
            self.issue(path, line, "invalid", message)
        return False, None

    def line(
        self, text: str, number: int, path: Path, section: Section | None, adjacent: bool
    ) -> tuple[bool, Section | None]:
        """process_text_line: a header, a directive, or a `key = value`."""
        if text.startswith("["):
            return self.header(text, number, path)
        if text.startswith("#"):
            return self.directive(text, number, path), section
        if section is None:
            return self.fatal(path, number, "parse error: a key before any [section]")
        if not self.variable(text, number, path, section, adjacent):
            return False, None
        return True, section

    def header(self, text: str, number: int, path: Path) -> tuple[bool, Section | None]:
        close = text.find("]")
        if close < 0:
            return self.fatal(path, number, "parse error: no closing ']'")
        name, after = text[1:close], text[close + 1 :]
        new: Section | None = Section(name, number, path)
        section = new
        if after.startswith("("):
            end = after.find(")")
            if end < 0:
                return self.fatal(path, number, "parse error: no closing ')'")
            for option in after[1:end].split(","):
                if option == "!":
                    assert section is not None
                    section.is_template = True
                elif option.startswith("+"):
                    target = self.find(name, option[1:], "&", path, number)
                    if target is None:
                        return self.fatal(
                            path, number, f"[{name}](+) adds to a section that does not exist"
                        )
                    if new is not None:
                        self.current = target
                        target.is_template |= new.is_template
                        target.items.extend(new.items)
                        new = None
                    section = target
                else:
                    base = self.find(option, "TEMPLATES=include", ",", path, number)
                    if base is None:
                        return self.fatal(
                            path, number, f"inherits from [{option}], which is not defined above"
                        )
                    assert section is not None
                    section.templates.append(base.name)
                    section.items.extend(
                        Item(i.key, i.value, i.line, i.file, base.name, i.comment_adjacent)
                        for i in base.items
                    )
        if new is not None:
            self.config.sections.append(new)
            self.current = new
        return True, section

    def find(self, name: str, match: str, sep: str, path: Path, number: int) -> Section | None:
        """category_get_sep(): the first section named `name` (any name when
        empty) that the filter `match` keeps; an empty filter keeps any
        non-template. What doctor could not decide is reported."""
        wanted = name.lower()
        named = (s for s in self.config.sections if not name or s.name.lower() == wanted)
        if not match:
            return next((s for s in named if not s.is_template), None)
        where = _category_filter(match, sep)
        for expression in where.unverifiable:
            self.issue(
                path,
                number,
                "unverifiable",
                f"[{shown(name)}](+{_clipped(match)}): doctor reads plain text, '.', '^' and "
                f"'$' in a filter, not the regular expression {_clipped(expression)!r}, and "
                "assumed it matches: check that line by hand",
            )
        return next((s for s in named if where.matches(s)), None)

    def directive(self, text: str, number: int, path: Path) -> bool:
        end = 1
        while end < len(text) and ord(text[end]) > 32:
            end += 1
        name, argument = text[1:end].lower(), _strip(text[end:])
        if name == "exec":
            self.issue(
                path,
                number,
                "unverifiable",
                "#exec is not run by doctor (Asterisk runs it only with execincludes = yes "
                "in asterisk.conf): what it adds is not checked",
            )
            return True
        if name not in ("include", "tryinclude"):
            self.issue(path, number, "warning", f"unknown directive #{shown(name)}: ignored")
            return True
        if not argument:
            self.issue(path, number, "warning", f"#{name} needs a file name: ignored")
            return True
        closing = {'"': '"', "<": ">"}.get(argument[0])
        if closing and len(argument) > 1 and argument.endswith(closing):
            argument = argument[1:-1]
        if self.include(argument, number, path) or name == "tryinclude":
            return True
        self.fatal(path, number, f"#include {shown(argument)!r}: the file does not exist")
        return False

    def include(self, argument: str, number: int, path: Path) -> bool:
        """Read every file the include names; False when none could be found."""
        if self.level >= MAX_INCLUDE_LEVEL + 1:
            self.issue(path, number, "warning", "includes nested too deep (10 levels)")
            return False
        if self.stopped:
            return True
        pattern = argument if argument.startswith("/") else str(self.config_dir / argument)
        names = sorted(glob.glob(pattern)) or [pattern]
        found = 0
        for name in names:
            data = self.read(name)
            if isinstance(data, PermissionError):
                self.issue(
                    path,
                    number,
                    "unverifiable",
                    f"cannot read included {shown(name)} (permission denied): not checked",
                )
            if data is None:
                continue
            found += 1
            if isinstance(data, bytes) and not self.over_budget(data, path, number):
                self.parse(data, Path(name))
        return found > 0

    def read(self, name: str) -> bytes | PermissionError | None:
        """An included file's bytes (None: not a readable regular file), read
        from disk once per load however many times it is included."""
        if name not in self.files:
            try:
                target = Path(name)
                self.files[name] = target.read_bytes() if target.is_file() else None
            except PermissionError as exc:
                self.files[name] = exc
            except OSError:
                self.files[name] = None
        return self.files[name]

    def over_budget(self, data: bytes, path: Path, number: int) -> bool:
        """True once includes have brought in MAX_INCLUDED_LINES lines: from
        then on no include is read, and the config says so once."""
        self.included_lines += data.count(b"\n") + 1
        if self.included_lines <= MAX_INCLUDED_LINES:
            return False
        self.stopped = True
        self.issue(
            path,
            number,
            "unverifiable",
            f"includes expand past {MAX_INCLUDED_LINES} lines (a file included again "
            "by itself or by a file it includes, more than once?): doctor stops reading "
            "includes here, what the rest adds is not checked",
        )
        return True

    def variable(
        self, text: str, number: int, path: Path, section: Section, adjacent: bool
    ) -> bool:
        """Add one item; False only for the one fatal case, a bad leading escape."""
        escaped = text.startswith("\\")
        if escaped:
            text = text[1:]
            if not text or ord(text[0]) < 33:
                self.fatal(path, number, "invalid escape at the start of the line")
                return False
        equals = text.find("=", 1 if escaped else 0)
        if equals < 0:
            self.issue(path, number, "warning", "no '=' in this line: ignored")
            return True
        value = text[equals + 1 :]
        if equals > (1 if escaped else 0) and text[equals - 1] == "+":  # key += more
            key = _strip(text[: equals - 1])
            previous = [i for i, item in enumerate(section.items) if item.key == key]
            if previous:
                old = section.items[previous[-1]]
                joined = _strip(old.value + value)
                section.items[previous[-1]] = Item(old.key, joined, number, path, None, adjacent)
                return True
        else:
            key = _strip(text[:equals])
            if value.startswith(">"):  # `=>` is `=`
                value = value[1:]
        if not key:
            self.issue(path, number, "warning", "no key before '=': ignored")
            return True
        section.items.append(Item(key, _strip(value), number, path, None, adjacent))
        return True


def parse_config(data: bytes, path: Path, config_dir: Path | None = None) -> ConfigFile:
    """Parse `data` as the file `path`; `#include` resolves against `config_dir`
    (Asterisk's astetcdir), by default the file's directory. Never raises."""
    loader = _Loader(config_dir if config_dir is not None else path.parent)
    loader.result = ConfigFile(path)
    loader.parse(data, path)
    return loader.config


def load_config(path: Path, config_dir: Path | None = None) -> ConfigFile:
    """Read and parse one config file the way Asterisk loads it at start-up.

    Raises ConfigParseError only when the file cannot be opened: for Asterisk
    a missing file means "no configuration", which is not the same as an
    invalid one, and doctor cannot judge a file it may not read.
    """
    try:
        if not path.exists():
            raise ConfigParseError(path, "missing")
        if not path.is_file():
            raise ConfigParseError(path, "not_a_file")
        data = path.read_bytes()
    except PermissionError as exc:
        raise ConfigParseError(path, "permission", exc.strerror or "") from exc
    except OSError as exc:
        raise ConfigParseError(path, "unreadable", exc.strerror or str(exc)) from exc
    return parse_config(data, path, config_dir)
