"""Run the benchmarks and write docs/BENCHMARKS.md (`make bench`).

    python bench/run.py [--quick] [--only NAME ...]

`--only` measures the named sections (cold-start, kill-recovery,
health-hanging, fault-modes, open-breaker, overhead, doctor) and replaces
just those in docs/BENCHMARKS.md, each marked with the command and date, so
one benchmark can be refreshed without re-measuring everything.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import doctor
import stack
import turns

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"

Section = tuple[str, str, Callable[[], list[str]]]


def sections(runs: int) -> list[Section]:
    """(name for --only, title, measurement), in the order of the document."""
    return [
        ("cold-start", "`vagent up` cold start", lambda: stack.bench_cold_start(runs)),
        ("kill-recovery", "Recovery after `kill -9`", lambda: stack.bench_kill_recovery(runs)),
        (
            "health-hanging",
            "/health with every dependency hanging",
            lambda: stack.bench_health_when_hanging(40 * runs),
        ),
        (
            "fault-modes",
            "Time to first audio under each single fault",
            lambda: turns.bench_fault_modes(runs),
        ),
        ("open-breaker", "An open breaker", lambda: turns.bench_open_breaker(4 * runs)),
        (
            "overhead",
            "Pipeline overhead under load",
            lambda: turns.bench_overhead((1, 10, 100)),
        ),
        ("doctor", "`vagent doctor` wall time", lambda: doctor.bench_doctor(2 * runs)),
    ]


def _command() -> str:
    return " ".join(["python", "bench/run.py", *sys.argv[1:]])


def _machine() -> str:
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )


def _splice(document: str, title: str, body: list[str]) -> str:
    """Replace the `## title` section of the document (or append it), keeping the others."""
    lines = document.rstrip("\n").split("\n")
    heading = f"## {title}"
    new = [heading, "", f"Measured by `{_command()}` on {_machine()}.", "", *body, ""]
    if heading not in lines:
        return "\n".join([*lines, "", *new])
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([*lines[:start], *new, *lines[end:]])


def _only() -> list[str]:
    return sys.argv[sys.argv.index("--only") + 1 :] if "--only" in sys.argv else []


def main() -> None:
    runs = 2 if "--quick" in sys.argv else 5
    chosen = _only()
    known = sections(runs)
    unknown = set(chosen) - {name for name, _, _ in known}
    if unknown:
        sys.exit(f"unknown section(s) {sorted(unknown)}: choose from {[n for n, _, _ in known]}")
    if chosen:
        document = OUTPUT.read_text() if OUTPUT.exists() else "# Benchmarks\n"
        for name, title, measure in known:
            if name in chosen:
                document = _splice(document, title, measure())
        OUTPUT.write_text(document.rstrip("\n") + "\n")
        print(document)
        return
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`{_command()}`) on {_machine()}.",
        "",
    ]
    for _, title, measure in known:
        lines += [f"## {title}", "", *measure(), ""]
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
