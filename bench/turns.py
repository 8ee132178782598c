"""Turn benchmarks: time to first audio under each single fault, the cost of an
open breaker, and the pipeline's own overhead under concurrency.

The baseline for the fault modes is the seed's naive policy, measured in the
same run against the same double: tenacity `wait_exponential(multiplier=1,
min=1, max=10)`, `stop_after_attempt(3)`, no deadline, then the next
provider. It runs in this process, stage after stage, with no bus at all.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from stack import _env, _vagent

from support.openai_double import OpenAIDouble
from vagent.cli.probe import ProbeResult, probe_turn, spoken_wav
from vagent.services.config import Settings

KEY = "sk-bench-0123456789abcdef"
BUDGET_MS = 1500
NAIVE_CAP_S = 15.0
QUESTION = "When are you open?"

Fault = Callable[[OpenAIDouble], object]

FAULTS: list[tuple[str, Fault]] = [
    ("no fault", lambda d: None),
    ("LLM primary 500s", lambda d: d.fail("chat", 500, model="gpt-4o")),
    ("LLM primary hangs", lambda d: d.hang("chat", model="gpt-4o")),
    ("LLM stream opens, sends nothing", lambda d: d.stream_silent("chat", model="gpt-4o")),
    ("every LLM model fails", lambda d: d.fail("chat", 503)),
    ("API key rejected (chat)", lambda d: d.fail("chat", 401)),
    ("primary model not found", lambda d: d.fail("chat", 404, model="gpt-4o")),
    ("TTS down (500)", lambda d: d.fail("speech", 500)),
    ("TTS hangs", lambda d: d.hang("speech")),
    ("STT down (500)", lambda d: d.fail("transcriptions", 500)),
    ("STT hangs", lambda d: d.hang("transcriptions")),
]


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} / {p99:.0f}"


@contextmanager
def _double_process() -> Iterator[str]:
    """The double in its own process, so it does not share this process's GIL under load."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    process = subprocess.Popen(
        [sys.executable, "-m", "support.openai_double", "--port", "0", "--api-key", KEY],
        cwd=tests,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = process.stdout.readline() if process.stdout else ""
        yield ready.split("base_url=")[1].split()[0]
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def _stack(base_url: str, **extra: str) -> Iterator[tuple[Settings, dict[str, str]]]:
    with tempfile.TemporaryDirectory() as home:
        env = _env(
            Path(home),
            OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=base_url,
            VAGENT_TURN_BUDGET_MS=str(BUDGET_MS),
            **extra,
        )
        if _vagent(env, "up", "--timeout", "60").returncode > 1:
            raise RuntimeError("the stack did not come up")
        try:
            yield Settings(home=Path(home), port_base=int(env["VAGENT_PORT_BASE"])), env
        finally:
            _vagent(env, "down")


def _turn(settings: Settings, stt: bool) -> ProbeResult:
    text, wav = (None, spoken_wav(QUESTION)) if stt else (QUESTION, b"")
    return asyncio.run(probe_turn(settings, text, wav, timeout_s=15))


async def _naive_turn(double: OpenAIDouble, stt: bool) -> float:
    """The seed's way: each stage retried naively, then the next provider; ms to first audio."""
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=double.base_url, max_retries=0, timeout=NAIVE_CAP_S
    )
    start = time.perf_counter()
    try:
        async with asyncio.timeout(NAIVE_CAP_S):
            if stt:
                await _naive(
                    lambda: client.audio.transcriptions.create(
                        model="gpt-4o-mini-transcribe", file=("u.wav", spoken_wav(QUESTION))
                    )
                )
            reply = await _naive_chat(client)
            await _naive(
                lambda: client.audio.speech.create(
                    model="gpt-4o-mini-tts", voice="alloy", input=reply, response_format="pcm"
                )
            )
    except Exception:  # the naive pipeline's last provider failed: espeak would speak now
        pass
    finally:
        await client.close()
    return (time.perf_counter() - start) * 1000


async def _naive(call: Callable[[], Any]) -> Any:
    retrying = AsyncRetrying(
        wait=wait_exponential(multiplier=1, min=1, max=10),
        stop=stop_after_attempt(3),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()


async def _naive_chat(client: openai.AsyncOpenAI) -> str:
    for model in ("gpt-4o", "gpt-4o-mini"):
        try:
            response = await _naive(
                lambda m=model: client.chat.completions.create(
                    model=m, messages=[{"role": "user", "content": QUESTION}]
                )
            )
            return str(response.choices[0].message.content)
        except openai.OpenAIError:
            continue
    return "We are open from nine to five."


def bench_fault_modes(turns: int) -> list[str]:
    lines = [
        f"Turn budget {BUDGET_MS} ms. Breakers only open on permanent errors here (fail_max 20), "
        "so every turn pays a transient fault in full; the services restart between faults. "
        "Median / p99 ms over "
        f"{turns} turns; the naive baseline is capped at {NAIVE_CAP_S:.0f} s.",
        "",
        "| fault | vagent: first audio (ms) | served by | naive seed policy (ms) | target |",
        "|---|---|---|---|---|",
    ]
    with (
        OpenAIDouble(api_key=KEY) as double,
        _stack(double.base_url, VAGENT_BREAKER_FAIL_MAX="20") as (s, env),
    ):
        for name, inject in FAULTS:
            stt = name.startswith("STT")
            double.reset()
            _vagent(env, "restart")
            inject(double)
            results = [_turn(s, stt) for _ in range(turns)]
            served = _served_by(results[-1])
            first = [r.first_audio_ms or float("inf") for r in results]
            naive = [asyncio.run(_naive_turn(double, stt))]
            ok = "met" if max(first) <= BUDGET_MS else "MISSED"
            lines.append(f"| {name} | {_stats(first)} | {served} | {_stats(naive)} | {ok} |")
    return lines


def _served_by(result: ProbeResult) -> str:
    return (
        ", ".join(
            f"{stage}: {record.get('model', '-')}"
            for stage, record in result.stages.items()
            if record.get("provider") not in ("primary", "none")
        )
        or "primaries"
    )


def bench_open_breaker(turns: int) -> list[str]:
    """LLM stage time with gpt-4o's breaker open vs the fallback model serving alone."""
    with (
        OpenAIDouble(api_key=KEY) as double,
        _stack(double.base_url, VAGENT_BREAKER_FAIL_MAX="3", VAGENT_BREAKER_RESET_S="600") as (
            s,
            _,
        ),
    ):
        alone = _llm_ms(s, turns)
        double.fail("chat", 500, model="gpt-4o")
        for _ in range(3):
            _turn(s, stt=False)
        requests_before = len(double.requests(route="chat", model="gpt-4o"))
        open_ms = _llm_ms(s, turns)
        sent = len(double.requests(route="chat", model="gpt-4o")) - requests_before
    added = statistics.median(open_ms) - statistics.median(alone)
    return [
        "| LLM stage (ms, median / p99) | value |",
        "|---|---|",
        f"| baseline: one healthy model answers (the primary) | {_stats(alone)} |",
        f"| primary's breaker open, the fallback model answers | {_stats(open_ms)} |",
        f"| added by the open breaker (median) | {added:+.1f} ms (target < 10 ms) |",
        f"| requests that reached the primary while open | {sent} |",
    ]


def _llm_ms(settings: Settings, turns: int) -> list[float]:
    return [float(_turn(settings, stt=False).stages["llm"]["ms"]) for _ in range(turns)]


def bench_overhead(levels: tuple[int, ...], calls: int = 100, seconds: float = 20.0) -> list[str]:
    """First audio minus the provider calls themselves: what vagent's pipeline adds."""
    lines = [
        "The double runs in its own process with no added latency. Overhead = first audio - LLM "
        "stage - TTS stage (the provider calls): bus hops, queueing for the CPU, encoding. "
        "ms, median / p99.",
        "",
        "| load | turns | first audio | pipeline overhead | target |",
        "|---|---|---|---|---|",
    ]
    with _double_process() as base_url, _stack(base_url) as (s, _):
        _turn(s, stt=False)
        for level in levels:
            results = asyncio.run(_burst(s, level))
            label = f"burst: {level} turn{'s' if level > 1 else ''} at the same instant"
            lines.append(_overhead_row(label, results, ""))
        results = asyncio.run(_calls(s, calls, seconds))
        lines.append(
            _overhead_row(
                f"{calls} concurrent calls, one turn every {TURN_GAP_S:.0f} s each",
                results,
                "p99 <= 25 ms",
            )
        )
    return lines


TURN_GAP_S = 3.0


def _overhead_row(load: str, results: list[ProbeResult], target: str) -> str:
    done = [r for r in results if r.complete and "tts" in r.stages and r.first_audio_ms]
    first = [r.first_audio_ms or 0.0 for r in done]
    overhead = [
        (r.first_audio_ms or 0) - r.stages["llm"]["ms"] - r.stages["tts"]["ms"] for r in done
    ]
    lost = len(results) - len(done)
    count = f"{len(done)}" + (f" ({lost} incomplete)" if lost else "")
    met = ""
    if target:
        met = f"{target}: {'met' if _p99(overhead) <= 25 else 'MISSED'}"
    return f"| {load} | {count} | {_stats(first)} | {_stats(overhead)} | {met} |"


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def _burst(settings: Settings, level: int) -> list[ProbeResult]:
    rounds = max(1, 200 // level)
    results: list[ProbeResult] = []
    for _ in range(rounds):
        results += await asyncio.gather(
            *(probe_turn(settings, QUESTION, b"", timeout_s=30) for _ in range(level))
        )
    return results


async def _calls(settings: Settings, calls: int, seconds: float) -> list[ProbeResult]:
    """Calls as on a busy PBX: each talks in turns, the turns of different calls interleave."""
    results: list[ProbeResult] = []

    async def call(index: int) -> None:
        await asyncio.sleep(TURN_GAP_S * index / calls)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            results.append(await probe_turn(settings, QUESTION, b"", timeout_s=30))
            await asyncio.sleep(TURN_GAP_S)

    await asyncio.gather(*(call(i) for i in range(calls)))
    return results
