"""Run every benchmark and write docs/BENCHMARKS.md (`make bench`)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import stack
import turns

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def main() -> None:
    quick = "--quick" in sys.argv
    runs = 2 if quick else 5
    sections = [
        ("`vagent up` cold start", stack.bench_cold_start(runs)),
        ("Recovery after `kill -9`", stack.bench_kill_recovery(runs)),
        ("/health with every dependency hanging", stack.bench_health_when_hanging(40 * runs)),
        ("Time to first audio under each single fault", turns.bench_fault_modes(runs)),
        ("An open breaker", turns.bench_open_breaker(4 * runs)),
        ("Pipeline overhead under load", turns.bench_overhead((1, 10, 100))),
    ]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`) "
        f"on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
    ]
    for title, body in sections:
        lines += [f"## {title}", "", *body, ""]
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
