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

from vagent.services import metrics
from vagent.services.llm_service.sentences import SentenceSplitter
from vagent.services.resilience import Dependency, DependencyError, ErrorKind
from vagent.services.responses import FallbackResponseManager

log = logging.getLogger("vagent.llm")

Message = dict[str, str]

MAX_REPLY_TOKENS = 300
CHUNK_TIMEOUT_S = 3.0  # a stream silent this long after its first piece is over

# What reading a chunk the client cannot parse raises (bad JSON, bytes that are
# not UTF-8, JSON nested past the stack), and what a chunk of a shape no chat
# stream has raises when its fields are read: None or a number for choices,
# delta or content. The openai client builds chunks without validating them.
_MALFORMED_CHUNK = (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError)


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
        try:
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                max_tokens=MAX_REPLY_TOKENS,
            )
        except httpx2.HTTPError as exc:
            # The client reads an error status's body outside its own error
            # wrapping: a body cut (or undecodable) there arrives raw.
            raise self._transfer_failed(exc) from exc
        chunks = stream.__aiter__()
        splitter = SentenceSplitter()
        try:
            while (text := await self._next_text(chunks)) is not None:
                pieces = splitter.feed(text)
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
                async with asyncio.timeout(CHUNK_TIMEOUT_S):
                    text = await self._next_text(chunks)
                if text is None:
                    break
                for piece in splitter.feed(text):
                    yield piece
            if tail := splitter.flush():
                yield tail
        except (TimeoutError, DependencyError, openai.APIError) as exc:
            # Cut mid-reply: keep what was said, drop the half sentence.
            log.warning("%s: reply stream cut (%s); ending the reply there", self.name, exc)
        finally:
            await stream.close()

    async def _next_text(self, chunks: AsyncIterator[Any]) -> str | None:
        """The text of the next chunk ("" for one without text), None at the end.

        A chunk that cannot be read is the provider's fault, like a cut
        stream: a transient DependencyError that says so, never a bare
        JSONDecodeError or AttributeError from deep inside the client.
        """
        try:
            return _content(await anext(chunks))
        except StopAsyncIteration:
            return None
        except httpx2.HTTPError as exc:
            raise self._transfer_failed(exc) from exc
        except _MALFORMED_CHUNK as exc:
            metrics.REJECTED_INPUT.labels("openai", "malformed_chunk").inc()
            raise DependencyError(
                f"{self.name}: malformed stream chunk ({type(exc).__name__}: {str(exc)[:100]})",
                ErrorKind.TRANSIENT,
            ) from exc

    def _transfer_failed(self, exc: httpx2.HTTPError) -> DependencyError:
        return DependencyError(
            f"{self.name}: transfer failed ({type(exc).__name__})", ErrorKind.TRANSIENT
        )


def _content(chunk: Any) -> str:
    """The delta text of a chunk; TypeError when a field has a shape no chat chunk has."""
    if not chunk.choices:
        return ""
    content = chunk.choices[0].delta.content
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError(f"delta content is a {type(content).__name__}, not text")
    return content
