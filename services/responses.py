"""FallbackResponseManager: the scripted replies and fixed prompts of the agent.

The llm_service answers from them when no model can; the tts_service renders
the fixed prompts (greeting, filler, error prompts) from them.

The replies live in a TOML file an admin can edit. A broken file must not
silence the service, so it is checked at start and /health says what is wrong.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant answering a phone call. Reply in one to three short "
    "spoken sentences, with no lists, markup or emoji."
)
log = logging.getLogger("vagent.responses")

REQUIRED_TEMPLATES = ("GREETING", "FILLER", "ERROR_GENERIC", "ERROR_STT", "FALLBACK", "GOODBYE")


class FallbackResponsesError(ValueError):
    """The responses file cannot be used; the message says which file and what to fix."""


@dataclass(frozen=True)
class FaqEntry:
    keywords: tuple[str, ...]
    reply: str


def default_path() -> Path:
    return Path(str(resources.files("vagent.services") / "fallback_responses.toml"))


@dataclass(frozen=True)
class FallbackResponseManager:
    templates: dict[str, str]
    faq: tuple[FaqEntry, ...]
    source: Path
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    @classmethod
    def load(cls, path: Path | None = None) -> FallbackResponseManager:
        source = path or default_path()
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FallbackResponsesError(f"{source}: cannot read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise FallbackResponsesError(f"{source}: not valid TOML ({exc})") from None
        return cls(_templates(data, source), _faq(data, source), source, _system_prompt(data))

    def template(self, name: str) -> str:
        return self.templates[name]

    def reply_for(self, text: str) -> str:
        """The first FAQ entry whose keyword the caller said, else the FALLBACK template."""
        words = text.lower()
        for entry in self.faq:
            if any(keyword in words for keyword in entry.keywords):
                return entry.reply
        return self.templates["FALLBACK"]


def _templates(data: dict[str, object], source: Path) -> dict[str, str]:
    templates = data.get("templates")
    if not isinstance(templates, dict):
        raise FallbackResponsesError(f"{source}: needs a [templates] table")
    missing = [name for name in REQUIRED_TEMPLATES if not str(templates.get(name, "")).strip()]
    if missing:
        raise FallbackResponsesError(f"{source}: [templates] lacks {', '.join(missing)}")
    return {str(k): str(v) for k, v in templates.items()}


def _faq(data: dict[str, object], source: Path) -> tuple[FaqEntry, ...]:
    entries = data.get("faq", [])
    if not isinstance(entries, list):
        raise FallbackResponsesError(f"{source}: faq must be a list of [[faq]] tables")
    parsed = []
    for number, entry in enumerate(entries, start=1):
        keywords = entry.get("keywords") if isinstance(entry, dict) else None
        reply = entry.get("reply") if isinstance(entry, dict) else None
        if not isinstance(keywords, list) or not keywords or not isinstance(reply, str):
            raise FallbackResponsesError(
                f'{source}: [[faq]] entry {number} needs keywords = [...] and reply = "..."'
            )
        parsed.append(FaqEntry(tuple(str(k).lower() for k in keywords), reply))
    return tuple(parsed)


def _system_prompt(data: dict[str, object]) -> str:
    agent = data.get("agent")
    prompt = agent.get("system_prompt") if isinstance(agent, dict) else None
    return prompt.strip() if isinstance(prompt, str) and prompt.strip() else DEFAULT_SYSTEM_PROMPT


def load_responses(path: Path | None) -> FallbackResponseManager:
    """The admin's file, or the shipped one when theirs is broken (health says so)."""
    try:
        return FallbackResponseManager.load(path)
    except FallbackResponsesError as exc:
        log.error("%s; using the shipped responses until it is fixed", exc)
        return FallbackResponseManager.load()
