"""Configuration from the environment and a `.env` file.

Every process of vagent (the CLI and the four services) reads the same
settings, so a value an admin sets once means the same thing everywhere.
A bad value never surfaces as a traceback: `load_settings` turns pydantic's
errors into a `ConfigError` that names the variable and says how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from vagent.services.rtpengine import parse_ng_address

SERVICES: tuple[str, ...] = ("call_controller", "stt_service", "llm_service", "tts_service")

ENV_FILE_VARIABLE = "VAGENT_ENV_FILE"


def default_home() -> Path:
    """Per-user state directory, so a non-root admin can run vagent too."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vagent"


class ConfigError(Exception):
    """Invalid configuration, phrased for the admin who has to fix it."""


class Settings(BaseSettings):
    """All of vagent's configuration. Field descriptions double as fix hints."""

    model_config = SettingsConfigDict(
        env_prefix="VAGENT_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    home: Path = Field(
        default_factory=default_home,
        description="a writable directory for the run dir, logs and sockets",
    )
    bind_host: str = Field(
        default="127.0.0.1",
        description="the address the services listen on (loopback unless you mean it)",
    )
    port_base: int = Field(
        default=8700,
        ge=1024,
        le=65000,
        description="a port number between 1024 and 65000; services listen on the next four ports",
    )
    redis_url: str | None = Field(
        default=None,
        description="a redis:// or unix:// URL, or leave it unset to run an embedded redis-server",
    )
    ari_url: str | None = Field(
        default=None, description="the Asterisk HTTP server, e.g. http://127.0.0.1:8088"
    )
    ari_user: str = Field(default="vagent", description="the user of a section in ari.conf")
    ari_password: SecretStr | None = Field(
        default=None, description="the password of that ari.conf user"
    )
    asterisk_config_dir: Path = Field(
        default=Path("/etc/asterisk"),
        description="the directory holding Asterisk's http.conf and ari.conf (read by doctor)",
    )
    ari_app: str = Field(
        default="vagent",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the Stasis application name used in the dialplan (letters, digits, _ . -)",
    )
    media_host: str = Field(
        default="127.0.0.1",
        description="the address Asterisk sends call audio to (this host, as Asterisk sees it)",
    )
    media_mode: Literal["direct", "rtpengine"] = Field(
        default="direct",
        description="direct (RTP between Asterisk and vagent) or rtpengine (anchored through "
        "VAGENT_RTPENGINE_NG)",
    )
    media_format: Literal["ulaw", "slin16"] = Field(
        default="ulaw", description="ulaw (8 kHz) or slin16 (16 kHz) for ExternalMedia"
    )
    on_failure: Literal["continue", "hangup"] = Field(
        default="continue",
        description="continue (back to the dialplan) or hangup, after the error prompt",
    )
    drain_s: float = Field(
        default=30.0, ge=0, le=600, description="seconds (0-600) live calls get to end on shutdown"
    )
    rtpengine_ng: str | None = Field(
        default=None,
        description="the rtpengine ng control address as host:port, e.g. 127.0.0.1:2223",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "VAGENT_OPENAI_API_KEY"),
        description="an OpenAI API key, or leave it unset to run on local engines",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "VAGENT_OPENAI_BASE_URL"),
        description="an http(s) URL of an OpenAI-compatible API, e.g. https://api.example.com/v1",
    )
    stt_model: str = Field(default="gpt-4o-mini-transcribe", min_length=1)
    llm_model: str = Field(default="gpt-4o", min_length=1)
    llm_fallback_models: str = Field(
        default="gpt-4o-mini", description="a comma-separated list of model ids"
    )
    tts_model: str = Field(default="gpt-4o-mini-tts", min_length=1)
    tts_voice: str = Field(default="alloy", min_length=1)
    local_tts: Literal["espeak-ng", "none"] = Field(
        default="espeak-ng",
        description="espeak-ng, or none to go from OpenAI TTS straight to Asterisk characters:",
    )
    fallback_responses: Path | None = Field(
        default=None,
        description="the path of a TOML file of scripted replies (see fallback_responses.toml)",
    )
    turn_budget_ms: int = Field(
        default=1500, ge=200, le=30000, description="milliseconds between 200 and 30000"
    )
    breaker_fail_max: int = Field(
        default=3, ge=1, le=20, description="failures (1-20) before a breaker opens"
    )
    breaker_reset_s: float = Field(
        default=30.0, gt=0, le=600, description="seconds (0 < value <= 600) a breaker stays open"
    )
    log_format: Literal["text", "json"] = Field(default="text", description="text or json")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    health_timeout_s: float = Field(
        default=1.0, gt=0, le=30, description="seconds (0 < value <= 30) each health check may take"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        """Refuse what no file name, URL, header or argument can carry.

        Bytes of the environment that are not UTF-8 arrive as lone surrogates
        and a `.env` line may hold a NUL; both pass a `str` field and then
        fail far away (a password in an Authorization header, a directory
        name), so they stop here, named, instead.
        """
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("contains bytes that are not UTF-8") from None
        return value

    @field_validator("ari_url", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("rtpengine_ng")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        """The ng client's own parser: what passes here, the controller can use."""
        if value is None or value == "":
            return None
        parse_ng_address(value)
        return value

    @model_validator(mode="after")
    def _rtpengine_for_anchoring(self) -> Settings:
        if self.media_mode == "rtpengine" and not self.rtpengine_ng:
            raise ValueError("VAGENT_MEDIA_MODE=rtpengine needs VAGENT_RTPENGINE_NG (host:port)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_redis_socket(self) -> Path:
        return self.run_dir / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        """The URL services connect to: the configured one, or the embedded server's socket."""
        return self.redis_url or f"unix://{self.embedded_redis_socket}"

    @property
    def fallback_models(self) -> list[str]:
        return [m.strip() for m in self.llm_fallback_models.split(",") if m.strip()]

    @property
    def uses_openai(self) -> bool:
        return self.openai_api_key is not None and bool(self.openai_api_key.get_secret_value())

    def service_port(self, service: str) -> int:
        return self.port_base + 1 + SERVICES.index(service)

    def service_url(self, service: str) -> str:
        host = "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host
        return f"http://{host}:{self.service_port(service)}"

    def secrets(self) -> list[str]:
        """Values that must never reach a log line or an output: the API key, the ARI
        password, and a password written into VAGENT_REDIS_URL or VAGENT_ARI_URL."""
        values = [
            s.get_secret_value()
            for s in (self.openai_api_key, self.ari_password)
            if s is not None and s.get_secret_value()
        ]
        return values + [
            p for url in (self.redis_url, self.ari_url) if url for p in url_passwords(url)
        ]


def url_passwords(url: str) -> list[str]:
    """The password of a URL as written and decoded, from its user info and its query."""
    parts = urlsplit(url)
    found = [parts.password or ""]
    found += [v for k, v in parse_qsl(parts.query) if k == "password"]
    return [p for raw in found if raw for p in {raw, unquote(raw)}]


def _field_for(loc: tuple[int | str, ...]) -> tuple[str, str | None]:
    """(the environment variable, the fix hint) of the field an error is about."""
    key = str(loc[0]) if loc else "?"
    for name, info in Settings.model_fields.items():
        aliases = (
            info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else []
        )
        if key == name or key.upper() in (str(a).upper() for a in aliases):
            variable = str(aliases[0]) if aliases else f"VAGENT_{name.upper()}"
            return variable, info.description
    return f"VAGENT_{key.upper()}", None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        reason = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a rule between several variables: its message names them
            lines.append(f"{reason}.")
            continue
        variable, hint = _field_for(item["loc"])
        lines.append(f"{variable} is invalid ({reason}): set it to {hint or 'a valid value'}.")
    return "\n".join(lines)


def env_file() -> Path | None:
    """The `.env` file in use: VAGENT_ENV_FILE, or `.env` in the current directory."""
    explicit = os.environ.get(ENV_FILE_VARIABLE)
    if explicit:
        return Path(explicit)
    local = Path(".env")
    return local.resolve() if local.is_file() else None


def load_settings() -> Settings:
    """Read settings, or raise ConfigError with a message an admin can act on."""
    path = None
    try:
        path = env_file()
        if path is not None and not path.is_file():
            raise ConfigError(
                f"{ENV_FILE_VARIABLE} points to {path}, which is not a readable file."
            )
        return Settings(_env_file=path)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"the settings file {path} is not UTF-8 text (byte {error.start}): save it as UTF-8."
        ) from None
    except OSError as error:
        raise ConfigError(
            f"cannot read the settings file ({ENV_FILE_VARIABLE} or ./.env): "
            f"{error.strerror or error}."
        ) from None
