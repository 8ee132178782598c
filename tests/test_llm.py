"""The llm_service's parts: sentence cutting, scripted replies, history in Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from conftest import RedisServer
from vagent.services.llm_service.engines import ScriptedChat
from vagent.services.llm_service.history import HISTORY_TTL_S, MAX_MESSAGES, History
from vagent.services.llm_service.sentences import HARD_LIMIT_CHARS, SentenceSplitter
from vagent.services.redis_client import RedisStore
from vagent.services.responses import (
    REQUIRED_TEMPLATES,
    FallbackResponseManager,
    FallbackResponsesError,
    load_responses,
)


def split(chunks: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    pieces = [p for chunk in chunks for p in splitter.feed(chunk)]
    return [*pieces, tail] if (tail := splitter.flush()) else pieces


def test_sentences_are_cut_as_they_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed(". How are") == ["Hello there."]
    assert splitter.feed(" you? I am") == ["How are you?"]
    assert splitter.flush() == "I am"


def test_a_long_first_sentence_is_cut_at_a_clause() -> None:
    text = "Our office, which is on the second floor of the old mill building, opens at nine "
    pieces = split([text, "and closes at five."])
    assert pieces[0].endswith(",")
    assert " ".join(pieces) == (text + "and closes at five.").replace("  ", " ").strip()


def test_no_piece_is_longer_than_the_hard_limit() -> None:
    pieces = split(["word " * 200])
    assert all(len(p) <= HARD_LIMIT_CHARS for p in pieces)
    assert all(not p.startswith(" ") and "wor d" not in p for p in pieces)


@given(st.lists(st.text(alphabet="abc ,.!?\n", max_size=40), max_size=20))
def test_splitting_loses_no_word(chunks: list[str]) -> None:
    assert " ".join(split(chunks)).split() == "".join(chunks).split()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "responses.toml"
    path.write_text(text)
    return path


def test_shipped_responses_have_every_template() -> None:
    manager = FallbackResponseManager.load()
    assert set(REQUIRED_TEMPLATES) <= set(manager.templates)
    assert "didn't catch that" in manager.template("ERROR_STT")
    assert "Monday to Friday" in manager.reply_for("what are your OPENING hours")
    assert manager.reply_for("tell me a joke") == manager.template("FALLBACK")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[templates\n", "not valid TOML"),
        ("title = 'x'\n", "needs a [templates] table"),
        ("[templates]\nGREETING = 'hi'\n", "lacks FILLER, ERROR_GENERIC"),
        (
            "[templates]\n"
            + "".join(f"{n} = 'x'\n" for n in REQUIRED_TEMPLATES)
            + "[[faq]]\nreply = 'x'\n",
            "[[faq]] entry 1 needs keywords",
        ),
    ],
)
def test_broken_responses_file_says_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FallbackResponsesError) as error:
        FallbackResponseManager.load(path)
    assert str(path) in str(error.value) and message in str(error.value)
    assert load_responses(path).source != path  # the service keeps answering from the shipped file


def test_missing_responses_file(tmp_path: Path) -> None:
    with pytest.raises(FallbackResponsesError, match="cannot read"):
        FallbackResponseManager.load(tmp_path / "nope.toml")


async def test_scripted_chat_speaks_the_faq_sentence_by_sentence() -> None:
    chat = ScriptedChat(FallbackResponseManager.load())
    reply = await chat.start([{"role": "user", "content": "bye"}], time.time() + 1)
    assert reply.first == "Thank you for calling."
    assert [p async for p in reply.rest] == ["Goodbye."]


async def test_history_lives_in_redis_with_a_ttl_and_a_bound(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    history = History(store)
    deadline = time.time() + 5
    assert await history.load("call-a", deadline) == []
    for i in range(MAX_MESSAGES):
        await history.append("call-a", f"question {i}", f"answer {i}")
    messages = await history.load("call-a", deadline)
    assert len(messages) == MAX_MESSAGES
    assert messages[-1] == {"role": "assistant", "content": f"answer {MAX_MESSAGES - 1}"}
    assert await history.load("call-b", deadline) == []
    ttl = redis.Redis(port=redis_server.port).ttl("vagent:history:call-a")
    assert 0 < ttl <= HISTORY_TTL_S
    replica = History(RedisStore(redis_server.url))  # any replica sees the same history
    assert await replica.load("call-a", deadline) == messages
    await store.close()
    await replica.store.close()
