"""Chat engines: OpenAI models (streamed) and the scripted responder.

An engine's `start` returns only once the first piece of the reply is
complete. That is the moment the engine has proven itself for this turn: a
stream that opens and then sends nothing fails inside the deadline and the
chain moves on, while a stream cut after the first piece ends the reply
there (what was said stays said; nothing is spoken twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from vagent.services.llm_service.sentences import SentenceSplitter
from vagent.services.resilience import Dependency, DependencyError, ErrorKind
from vagent.services.responses import FallbackResponseManager

log = logging.getLogger("vagent.llm")

Message = dict[str, str]

MAX_REPLY_TOKENS = 300
CHUNK_TIMEOUT_S = 3.0  # a stream silent this long after its first piece is over


@dataclass
class Reply:
    first: str
    rest: AsyncIterator[str]


class ChatEngine(Protocol):
    name: str
    kind: str

    async def start(self, messages: list[Message], deadline: float) -> Reply: ...


async def _pieces(pieces: list[str]) -> AsyncIterator[str]:
    for piece in pieces:
        yield piece


class ScriptedChat:
    """FAQ answers and templates: the link that cannot fail."""

    name = "scripted"
    kind = "scripted"

    def __init__(self, manager: FallbackResponseManager) -> None:
        self.manager = manager

    async def start(self, messages: list[Message], deadline: float) -> Reply:
        said = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        splitter = SentenceSplitter()
        pieces = [*splitter.feed(self.manager.reply_for(said) + " "), splitter.flush()]
        pieces = [p for p in pieces if p]
        return Reply(pieces[0], _pieces(pieces[1:]))


class OpenAIChat:
    """One OpenAI chat model behind its own breaker."""

    def __init__(
        self, client: openai.AsyncOpenAI, model: str, kind: str, dependency: Dependency
    ) -> None:
        self.client = client
        self.model = model
        self.kind = kind
        self.name = f"openai:{model}"
        self.dependency = dependency

    async def start(self, messages: list[Message], deadline: float) -> Reply:
        return await self.dependency.call(lambda: self._first_piece(messages), deadline=deadline)

    async def _first_piece(self, messages: list[Message]) -> Reply:
        stream = await self.client.chat.completions.create(
            model=self.model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            stream=True,
            max_tokens=MAX_REPLY_TOKENS,
        )
        chunks = stream.__aiter__()
        splitter = SentenceSplitter()
        try:
            async for chunk in chunks:
                pieces = splitter.feed(_content(chunk))
                if pieces:
                    return Reply(pieces[0], self._rest(stream, chunks, splitter, pieces[1:]))
        except BaseException:
            await stream.close()
            raise
        await stream.close()
        tail = splitter.flush()
        if not tail:
            raise DependencyError(f"{self.name}: stream ended with no text", ErrorKind.TRANSIENT)
        return Reply(tail, _pieces([]))

    async def _rest(
        self,
        stream: Any,
        chunks: AsyncIterator[Any],
        splitter: SentenceSplitter,
        ready: list[str],
    ) -> AsyncIterator[str]:
        try:
            for piece in ready:
                yield piece
            while True:
                try:
                    async with asyncio.timeout(CHUNK_TIMEOUT_S):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                for piece in splitter.feed(_content(chunk)):
                    yield piece
            if tail := splitter.flush():
                yield tail
        except (TimeoutError, openai.APIError, httpx2.HTTPError) as exc:
            # Cut mid-reply: keep what was said, drop the half sentence.
            log.warning("%s: reply stream cut (%s); ending the reply there", self.name, exc)
        finally:
            await stream.close()


def _content(chunk: Any) -> str:
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""
