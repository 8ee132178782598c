"""The chaos soak's short version, for CI: `make chaos` runs the long one.

Four calls talk to a fully configured stack (external Redis, the OpenAI
double with a random latency, the ARI double carrying real RTP) while a dozen
faults hit it one after the other: kill -9 of each service, a Redis restart,
the ARI websocket cut, provider failures, a drill. The assertions are the
issue's targets, over what the simulated callers really heard (definitions in
bench/chaos_calls.py and docs/RELIABILITY.md):

* no turn lost: every finished utterance was followed by agent audio;
* no turn silent beyond the budget while a call_controller process ran (a
  turn spoken while none did, after a kill -9, is answered only once the new
  one takes the call over: it must end in audio, it cannot be on time);
* no reply heard twice;
* the stack recovered from every fault.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import chaos

CALLS, FAULTS, SEED, MINUTES = 4, 12, 11, 3.5

# The soak runs once, in the fixture of whichever test comes first.
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(MINUTES * 60 + 120)]


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return chaos.run(chaos.Soak(CALLS, FAULTS, SEED, MINUTES))


def test_the_soak_really_broke_things(result: dict[str, Any]) -> None:
    faults, turns = result["faults"], result["turns"]
    assert faults["injected"] >= FAULTS - 2, chaos.summary(result)  # the time bound may cut
    kinds = {f["kind"] for f in result["fault_log"] if not f["skipped"]}
    assert {"kill", "redis", "ari-websocket", "provider"} <= kinds, kinds
    assert turns["attempted"] >= 5 * CALLS, chaos.summary(result)
    assert result["caller_errors"] == []
    assert result["double_violations"] == 0  # every ARI request valid against the Swagger files


def test_every_turn_ended_in_audio(result: dict[str, Any]) -> None:
    assert result["turns"]["lost"] == 0, _bad(result, "lost")


def test_no_turn_was_silent_beyond_the_budget_while_a_controller_ran(
    result: dict[str, Any],
) -> None:
    assert result["turns"]["silent_beyond_budget"] == 0, _bad(result, "silent >")


def test_no_reply_was_heard_twice(result: dict[str, Any]) -> None:
    assert result["turns"]["duplicate_replies"] == 0, _bad(result, "repeated")


def test_the_stack_recovered_from_every_fault(result: dict[str, Any]) -> None:
    assert result["faults"]["not_recovered"] == 0, result["fault_log"]


def _bad(result: dict[str, Any], problem: str) -> str:
    found = [t for t in result["bad_turns"] if t["problem"].startswith(problem)]
    return chaos.summary(result) + "\n" + "\n".join(map(str, found))
