"""Configuration errors name the variable and the fix, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vagent.services.config import ConfigError, load_settings
from vagent.services.logs import scrubber

SECRET = "sk-test-SECRETVALUE-123456"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("VAGENT_", "OPENAI_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_embedded_and_loopback() -> None:
    settings = load_settings()
    assert settings.bind_host == "127.0.0.1"
    assert settings.embedded_redis
    assert settings.effective_redis_url.startswith("unix://")
    assert not settings.uses_openai
    assert settings.ari_app == "vagent"
    assert settings.turn_budget_ms == 1500


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        ("VAGENT_PORT_BASE", "eighty", "a port number between 1024 and 65000"),
        ("VAGENT_PORT_BASE", "80", "a port number between 1024 and 65000"),
        ("VAGENT_REDIS_URL", "localhost:6379", "redis:// or unix://"),
        ("VAGENT_ARI_URL", "127.0.0.1:8088", "http://127.0.0.1:8088"),
        ("VAGENT_RTPENGINE_NG", "127.0.0.1", "host:port"),
        ("VAGENT_ARI_APP", "my app", "letters, digits"),
        ("VAGENT_TURN_BUDGET_MS", "50", "between 200 and 30000"),
        ("VAGENT_LOG_FORMAT", "xml", "text or json"),
        ("OPENAI_BASE_URL", "api.openai.com", "an http(s) URL"),
    ],
)
def test_invalid_value_names_variable_and_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fix: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(f"{variable} is invalid")
    assert fix in message


def test_anchoring_without_rtpengine_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAGENT_MEDIA_MODE", "rtpengine")
    with pytest.raises(ConfigError, match="VAGENT_MEDIA_MODE=rtpengine needs VAGENT_RTPENGINE_NG"):
        load_settings()


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={SECRET}\nVAGENT_LLM_MODEL=gpt-4o-mini\n")
    settings = load_settings()
    assert settings.uses_openai
    assert settings.llm_model == "gpt-4o-mini"
    assert SECRET not in repr(settings)


def test_missing_env_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAGENT_ENV_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="VAGENT_ENV_FILE points to"):
        load_settings()


def _vagent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "vagent"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_fix_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGENT_", "OPENAI_"))}
    env.update(
        VAGENT_HOME=str(tmp_path), VAGENT_PORT_BASE="http", OPENAI_API_KEY=SECRET, COLUMNS="200"
    )
    result = _vagent(env, "status")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "VAGENT_PORT_BASE is invalid" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def run_service(module: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """One service process with only `settings` for configuration, run to its exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGENT_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", f"vagent.services.{module}"],
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_service_exits_with_config_error_and_message(tmp_path: Path) -> None:
    result = run_service(
        "llm_service",
        VAGENT_HOME=str(tmp_path),
        VAGENT_REDIS_URL="localhost",
        VAGENT_ARI_PASSWORD=SECRET,
    )
    assert result.returncode == 78
    assert "VAGENT_REDIS_URL is invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


def test_passwords_written_into_urls_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis or ARI URL with a password in it: the password is scrubbed like the
    API key, as written and percent-decoded, from the user info and from `?password=`."""
    monkeypatch.setenv("VAGENT_REDIS_URL", "redis://:r%40dis-pw@10.0.0.5:6379/0?password=q-pw")
    monkeypatch.setenv("VAGENT_ARI_URL", "http://vagent:ari-url-pw@127.0.0.1:8088")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    secrets = load_settings().secrets()
    assert {SECRET, "r%40dis-pw", "r@dis-pw", "q-pw", "ari-url-pw"} <= set(secrets)
    scrub = scrubber(secrets)
    line = scrub("Redis unreachable at redis://:r@dis-pw@10.0.0.5:6379/0?password=q-pw")
    assert line == "Redis unreachable at redis://:***@10.0.0.5:6379/0?password=***"


def test_urls_without_passwords_add_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAGENT_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("VAGENT_ARI_URL", "http://127.0.0.1:8088")
    assert load_settings().secrets() == []


def test_a_service_whose_port_is_taken_stops_at_once_and_names_it(tmp_path: Path) -> None:
    """The port is bound before the service starts anything: a controller would otherwise
    connect to Asterisk and take calls, then die on the bind. The message names the port,
    its offset from VAGENT_PORT_BASE and the fix."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # Nothing listens at these: a service that got past its port would hang trying them.
        result = run_service(
            "call_controller",
            VAGENT_HOME=str(tmp_path),
            VAGENT_PORT_BASE=str(port - 1),
            VAGENT_REDIS_URL="redis://127.0.0.1:9/0",
            VAGENT_ARI_URL="http://127.0.0.1:9",
            VAGENT_ARI_PASSWORD=SECRET,
        )
    assert result.returncode == 78, result.stderr
    message = " ".join(result.stderr.split())
    assert f"cannot listen on 127.0.0.1:{port} (VAGENT_PORT_BASE + 1)" in message
    assert "set VAGENT_PORT_BASE to the first of five free ports" in message
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    assert "ready on" not in result.stderr
