"""The fixed prompts (greeting, filler, error prompts), rendered once and kept ready.

These prompts are what a caller hears when something has already gone
wrong: the filler when no answer is ready near the turn budget, the error
prompts when a service fails. They must not depend on the failing thing
at the moment they are needed, so they are rendered ahead of time, with
the best engine that works then (OpenAI, else espeak-ng), and kept in
memory as 8 kHz mu-law, ready to send.

They are also written to VAGENT_HOME/prompts/<NAME>-<sha1>.ulaw, the hash
covering the text and the engine (with its voice): a restart reloads them
instead of paying for them again, and an edited template or a new voice
simply has no file yet, so it is rendered afresh and the old file ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vagent.services.audio import TELEPHONY_RATE, Audio
from vagent.services.resilience import DependencyError
from vagent.services.responses import REQUIRED_TEMPLATES, FallbackResponseManager
from vagent.services.tts_service.engines import TtsEngine, engine_identity, telephony

log = logging.getLogger("vagent.tts.prompts")

PROMPT_NAMES: tuple[str, ...] = REQUIRED_TEMPLATES
"""GREETING, FILLER, ERROR_GENERIC, ERROR_STT, FALLBACK, GOODBYE: the templates every
responses file must define."""

_MIN_RMS = 50.0
"""Below about -56 dBFS a prompt is silence; a silent error prompt is worse than none,
because the fallback after it (SayAlpha) would not be tried."""


@dataclass(frozen=True)
class RenderedPrompt:
    name: str
    text: str
    ulaw: bytes  # 8 kHz G.711 mu-law
    engine: str  # the engine's name, e.g. "openai:gpt-4o-mini-tts" or "espeak-ng"
    from_disk: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.ulaw) / TELEPHONY_RATE


def prompts_directory(home: Path) -> Path:
    """Where rendered prompts are kept: VAGENT_HOME/prompts."""
    return home / "prompts"


def prompt_filename(name: str, text: str, engine: TtsEngine) -> str:
    """<NAME>-<sha1 of text and engine>.ulaw: any change of either makes a new name."""
    digest = hashlib.sha1(f"{text}\0{engine_identity(engine)}".encode(), usedforsecurity=False)
    return f"{name}-{digest.hexdigest()}.ulaw"


class PromptCache:
    """The fixed prompts of a FallbackResponseManager, rendered by the first engine that can.

    `engines` is tried in order for each prompt (e.g. [OpenAITts, EspeakTts]).
    A stored file of an earlier engine is preferred over rendering with a later
    one, and rendering with an earlier engine over a stored file of a later one:
    after an outage the prompts move back to the better voice.
    """

    def __init__(
        self,
        responses: FallbackResponseManager,
        engines: Sequence[TtsEngine],
        directory: Path | None = None,
    ) -> None:
        if not engines:
            raise ValueError("PromptCache needs at least one engine")
        self.responses = responses
        self.engines = tuple(engines)
        self.directory = directory
        self._prompts: dict[str, RenderedPrompt] = {}

    async def warm(self, deadline_per_prompt_s: float) -> None:
        """Render (or load) every prompt not yet in memory; prompts are rendered concurrently.

        Each engine's attempt at a prompt gets the full `deadline_per_prompt_s`:
        a primary that hangs until its deadline must not leave the local engine
        no time, or the prompts would be missing exactly when they are needed.
        Calling it again retries only the prompts still missing.
        """
        pending = [name for name in PROMPT_NAMES if name not in self._prompts]
        await asyncio.gather(*(self._warm_one(name, deadline_per_prompt_s) for name in pending))

    def get(self, name: str) -> RenderedPrompt | None:
        return self._prompts.get(name)

    def names(self) -> tuple[str, ...]:
        """The prompts that are ready to play, in PROMPT_NAMES order."""
        return tuple(name for name in PROMPT_NAMES if name in self._prompts)

    def missing(self) -> tuple[str, ...]:
        """The prompts no engine could render (yet): worth a warning in /health."""
        return tuple(name for name in PROMPT_NAMES if name not in self._prompts)

    async def _warm_one(self, name: str, budget_s: float) -> None:
        text = self.responses.template(name)
        for engine in self.engines:
            prompt = await self._load(name, text, engine)
            if prompt is None:
                prompt = await self._render(name, text, engine, budget_s)
            if prompt is not None:
                self._prompts[name] = prompt
                return
        log.error("prompt %s: no engine could render it (tried %s)", name, self._engine_names())

    async def _render(
        self, name: str, text: str, engine: TtsEngine, budget_s: float
    ) -> RenderedPrompt | None:
        try:
            audio = await engine.synthesize(text, time.time() + budget_s)
            _require_audible(audio, engine)
        except Exception as exc:
            log.warning("prompt %s: %s failed: %s", name, engine.name, _describe(exc))
            return None
        prompt = RenderedPrompt(name, text, telephony(audio), engine.name)
        log.info("prompt %s: rendered by %s (%.1fs)", name, engine.name, prompt.duration_s)
        await self._store(prompt, engine)
        return prompt

    async def _load(self, name: str, text: str, engine: TtsEngine) -> RenderedPrompt | None:
        if self.directory is None:
            return None
        path = self.directory / prompt_filename(name, text, engine)
        data = await asyncio.to_thread(_read_or_none, path)
        if not data:
            return None
        log.info("prompt %s: loaded from %s (%s)", name, path, engine.name)
        return RenderedPrompt(name, text, data, engine.name, from_disk=True)

    async def _store(self, prompt: RenderedPrompt, engine: TtsEngine) -> None:
        """Best effort: a read-only home costs a re-render at the next start, nothing more."""
        if self.directory is None:
            return
        path = self.directory / prompt_filename(prompt.name, prompt.text, engine)
        try:
            await asyncio.to_thread(_write_atomically, path, prompt.ulaw)
        except OSError as exc:
            log.warning("prompt %s: cannot store %s: %s", prompt.name, path, exc.strerror)

    def _engine_names(self) -> str:
        return ", ".join(engine.name for engine in self.engines)


def _require_audible(audio: Audio, engine: TtsEngine) -> None:
    if audio.rms() < _MIN_RMS:
        raise DependencyError(f"{engine.name} rendered silence")


def _describe(exc: Exception) -> str:
    """Our own errors say what failed; a provider's message may quote the (masked) key."""
    if isinstance(exc, DependencyError):
        return str(exc)
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__} (HTTP {status})" if status else type(exc).__name__


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s; rendering again", path, exc.strerror)
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write then rename: a replica starting meanwhile never loads half a prompt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
