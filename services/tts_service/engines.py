"""Text-to-speech engines: OpenAI TTS (primary) and espeak-ng (local).

Both engines give the same thing back, an `Audio`, and both respect the
turn's deadline: a late prompt on a phone call is as bad as none, so the
caller's fallback chain needs each engine to give up in time rather than
finish late. They differ in how they fail:

* OpenAI is a network dependency. Its calls go through the one policy
  layer (`Dependency`: timeout, retry, breaker), and every failure leaves
  here as an error `classify` understands.
* espeak-ng is a local process. It cannot be "down" like a network, so it
  has no breaker; but it is still bounded by the deadline, and a process
  that overruns is killed and reaped so no zombie outlives the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from typing import TYPE_CHECKING, Protocol

import httpx2

from vagent.services import metrics
from vagent.services.audio import FRAME_MS, Audio, AudioFormatError, read_wav, ulaw_encode
from vagent.services.resilience import (
    DeadlineExceeded,
    Dependency,
    DependencyError,
    ErrorKind,
    time_left,
)

if TYPE_CHECKING:  # the controller renders its prompts here and never loads openai
    from openai import AsyncOpenAI

OPENAI_PCM_RATE = 24_000
"""OpenAI's `pcm` speech format: raw 24 kHz, 16-bit signed little-endian, mono."""

ESPEAK_NOT_FOUND = "espeak-ng not found: apt-get install espeak-ng"

_STDERR_EXCERPT = 200

# Bodies that are certainly not PCM: raw PCM has no header to check, so a 200
# carrying a JSON error or an HTML page from a proxy would otherwise be played
# to the caller as noise. Anything else (audio/pcm, octet-stream, none) is audio.
_NOT_AUDIO_TYPES = ("application/json", "text/")


class TtsEngine(Protocol):
    """What tts_service and the prompt cache need from an engine."""

    name: str  # e.g. "openai:gpt-4o-mini-tts" or "espeak-ng": logs, metrics, RenderedPrompt.engine
    kind: str  # "primary" (network, behind a breaker) or "local"

    async def synthesize(self, text: str, deadline: float) -> Audio:
        """Speech for `text`, or an error; never later than `deadline` (a time.time() epoch)."""
        ...


def telephony(audio: Audio) -> bytes:
    """8 kHz G.711 mu-law: what the phone line (RTP payload type 0, ulaw files) plays."""
    return ulaw_encode(audio)


def engine_identity(engine: TtsEngine) -> str:
    """Everything that decides how an engine sounds, for cache keys.

    `name` alone misses the voice: after an admin changes the voice, cached
    prompts in the old one must not be replayed. Engines that know more
    than their name expose it as `identity`.
    """
    identity = getattr(engine, "identity", None)
    return identity if isinstance(identity, str) and identity else engine.name


def _require_text(text: str, engine: str) -> None:
    """Nothing to say is the caller's mistake, not an engine failure: no retry, no breaker count."""
    if not text.strip():
        raise DependencyError(f"{engine}: empty text, nothing to synthesize", ErrorKind.REJECTED)


def _min_samples(rate: int) -> int:
    """Less than one 20 ms frame carries nothing a caller can hear: treat it as no audio."""
    return rate * FRAME_MS // 1000


class OpenAITts:
    """OpenAI `/v1/audio/speech` in `pcm` format, called through the policy layer.

    `pcm` rather than the default mp3: no decoder is needed and the
    resampling to 8 kHz starts from clean 24 kHz samples.
    """

    kind = "primary"

    def __init__(self, client: AsyncOpenAI, model: str, voice: str, dependency: Dependency) -> None:
        self.client = client
        self.model = model
        self.voice = voice
        self.dependency = dependency
        self.name = f"openai:{model}"
        self.identity = f"openai:{model}:{voice}"

    async def synthesize(self, text: str, deadline: float) -> Audio:
        _require_text(text, self.name)
        pcm = await self.dependency.call(lambda: self._request(text), deadline=deadline)
        return Audio(pcm, OPENAI_PCM_RATE)

    async def _request(self, text: str) -> bytes:
        """One attempt. The policy layer owns its timeout; this only makes failures classifiable.

        A body cut mid-transfer can surface from the transport as a raw
        httpx2 error rather than an openai one; unwrapped, the policy layer
        would see an unknown exception. It is a network failure: transient.
        """
        try:
            response = await self.client.audio.speech.create(
                model=self.model, voice=self.voice, input=text, response_format="pcm"
            )
            pcm = await response.aread()
        except httpx2.TransportError as exc:
            raise DependencyError(
                f"{self.name}: transfer failed ({type(exc).__name__})", ErrorKind.TRANSIENT
            ) from exc
        content_type = response.response.headers.get("content-type", "").lower()
        if content_type.startswith(_NOT_AUDIO_TYPES):
            metrics.REJECTED_INPUT.labels("openai", "not_audio").inc()
            raise DependencyError(
                f"{self.name}: answered 200 with {content_type[:60]}, not audio",
                ErrorKind.TRANSIENT,
            )
        pcm = pcm[: len(pcm) - len(pcm) % 2]
        if len(pcm) // 2 < _min_samples(OPENAI_PCM_RATE):
            # Counted as transient: a 200 without audio is the provider misbehaving.
            raise DependencyError(f"{self.name}: answered without audio", ErrorKind.TRANSIENT)
        return pcm


class EspeakTts:
    """espeak-ng as a subprocess: the local engine that works with no network and no key.

    The text goes in on stdin, so it is never parsed as an option (a text
    may start with '-') and no length limit of the argument list applies.
    """

    kind = "local"
    name = "espeak-ng"

    def __init__(
        self, voice: str = "en-us", rate_wpm: int = 175, *, binary: str = "espeak-ng"
    ) -> None:
        if not voice or voice.startswith("-"):
            raise ValueError(f"not an espeak-ng voice: {voice!r}")
        if not 80 <= rate_wpm <= 450:
            raise ValueError(f"espeak-ng speaks 80-450 words per minute, not {rate_wpm}")
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.binary = binary
        self.identity = f"espeak-ng:{voice}:{rate_wpm}"

    async def synthesize(self, text: str, deadline: float) -> Audio:
        _require_text(text, self.name)
        binary = self._resolve_binary()
        time_left(deadline, self.name)  # no process at all for a turn that is already over
        process = await self._spawn(binary)
        try:
            async with asyncio.timeout(time_left(deadline, self.name)):
                wav, err = await process.communicate(text.encode("utf-8"))
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name}: turn deadline passed") from None
        finally:
            await _kill_and_reap(process)
        return self._decode(process.returncode, wav, err)

    def _resolve_binary(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise DependencyError(ESPEAK_NOT_FOUND, ErrorKind.PERMANENT)
        return path

    async def _spawn(self, binary: str) -> asyncio.subprocess.Process:
        # -b 1: the stdin text is UTF-8, whatever the locale of the service says.
        argv = ["--stdout", "-b", "1", "-v", self.voice, "-s", str(self.rate_wpm)]
        try:
            return await asyncio.create_subprocess_exec(
                binary,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except (FileNotFoundError, PermissionError):
            raise DependencyError(ESPEAK_NOT_FOUND, ErrorKind.PERMANENT) from None

    def _decode(self, returncode: int | None, wav: bytes, err: bytes) -> Audio:
        """Turn the process outcome into audio or a classified error.

        A non-zero exit (e.g. an unknown voice) repeats for the same
        configuration: permanent. Death by a signal (e.g. the OOM killer) may not.
        """
        detail = err.decode("utf-8", errors="replace").strip()[:_STDERR_EXCERPT]
        if returncode is not None and returncode < 0:
            raise DependencyError(
                f"{self.name}: killed by signal {-returncode}", ErrorKind.TRANSIENT
            )
        if returncode != 0:
            message = f"{self.name} -v {self.voice} failed (exit {returncode}): {detail or '?'}"
            raise DependencyError(message, ErrorKind.PERMANENT)
        try:
            audio = read_wav(wav)
        except AudioFormatError as exc:
            raise DependencyError(f"{self.name}: {exc}", ErrorKind.TRANSIENT) from None
        if audio.samples < _min_samples(audio.rate):
            raise DependencyError(f"{self.name}: produced no audio", ErrorKind.TRANSIENT)
        return audio


async def _kill_and_reap(process: asyncio.subprocess.Process) -> None:
    """Kill a process that is still running and wait for it, so no zombie is left behind.

    Shielded: when the turn is cancelled again while we wait, the wait
    still completes and the child is reaped.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await asyncio.shield(process.wait())
