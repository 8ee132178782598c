"""Fuzzing bus entries and configuration values.

Bus: `decode` turns any stream entry into an `Envelope` that later code can
trust (finite deadline, object body, non-empty ids) or a `PoisonMessage`
saying why; through a real redis-server, random poison lands in the
dead-letter stream with its reason while the consumer goes on with good work.

Configuration: any value of any variable gives `Settings` or a `ConfigError`
whose every line names a variable, never a traceback, and never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import AliasChoices
from test_fuzz_wire import rejected

from conftest import RedisServer
from vagent.services.bus import (
    DEAD_LETTER,
    Bus,
    Consumer,
    ConsumerConfig,
    Envelope,
    PoisonMessage,
    decode,
    stream_key,
)
from vagent.services.config import ConfigError, Settings, load_settings
from vagent.services.redis_client import RedisStore

PURE = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- bus: decode

VALID = {b"v": b"1", b"call_id": b"c", b"turn_id": b"t", b"deadline": b"1", b"msg_id": b"m"}
FIELDS = [b"v", b"call_id", b"turn_id", b"deadline", b"budget_at", b"msg_id", b"body", b"audio"]
DEEP = b"[" * 100_000

numbers = st.sampled_from(
    [b"1", b"0", b"-1", b" 1 ", b"1_0", b"nan", b"NaN", b"inf", b"-inf", b"1e309", b"9" * 5000]
) | st.floats().map(lambda f: repr(f).encode())
bodies = st.sampled_from([b"{}", b"", b"[]", b"null", b'{"a": NaN}', b"{" * 50, DEEP]) | st.just(
    b'{"text": "hi"}'
)
values = st.one_of(st.binary(max_size=20), numbers, bodies)
entries = st.dictionaries(st.sampled_from(FIELDS) | st.binary(max_size=6), values, max_size=10)


@PURE
@given(entries)
@example({**VALID, b"body": DEEP})
@example({**VALID, b"deadline": b"nan"})
@example({**VALID, b"budget_at": b"inf"})
@example({**VALID, b"msg_id": b""})
def test_any_entry_is_a_trustworthy_envelope_or_poison(fields: dict[bytes, bytes]) -> None:
    """Regressions: a deep body raised RecursionError (never dead-lettered, claimed forever);
    a NaN or infinite deadline never expired; an empty msg_id made the next such entry a
    "duplicate" of the first."""
    try:
        envelope = decode(fields)
    except PoisonMessage as exc:
        assert 0 < len(str(exc)) < 400  # the dead-letter reason: short and readable
        return
    assert math.isfinite(envelope.deadline) and math.isfinite(envelope.budget)
    assert isinstance(envelope.body, dict)
    assert all(isinstance(i, str) and i for i in (envelope.call_id, envelope.turn_id))
    assert isinstance(envelope.msg_id, str) and envelope.msg_id
    assert isinstance(envelope.audio, bytes)


json_bodies = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)
ids = st.text(min_size=1, max_size=12)
envelopes = st.builds(
    Envelope,
    call_id=ids,
    turn_id=ids,
    deadline=st.floats(min_value=0, max_value=4e9),
    msg_id=ids,
    body=json_bodies,
    audio=st.binary(max_size=30),
    budget_at=st.floats(min_value=0, max_value=4e9),
)


def _as_redis_returns(envelope: Envelope) -> dict[bytes, bytes]:
    """Stream fields as redis-py gives them back: every key and value bytes."""
    return {
        key.encode(): value if isinstance(value, bytes) else value.encode()
        for key, value in envelope.fields().items()
    }


@PURE
@given(envelopes)
def test_every_envelope_survives_the_wire(envelope: Envelope) -> None:
    back = decode(_as_redis_returns(envelope))
    assert (back.call_id, back.turn_id, back.msg_id) == (
        envelope.call_id,
        envelope.turn_id,
        envelope.msg_id,
    )
    assert (back.deadline, back.budget, back.body, back.audio) == (
        envelope.deadline,
        envelope.budget,
        envelope.body,
        envelope.audio,
    )


# --------------------------------------------------------------------------- bus: real Redis


def _is_poison(fields: dict[bytes, bytes]) -> bool:
    try:
        decode(fields)
    except PoisonMessage:
        return True
    return False


poison = st.dictionaries(
    st.sampled_from(FIELDS) | st.binary(min_size=1, max_size=6), values, min_size=1, max_size=8
).filter(_is_poison)
_streams = itertools.count()


async def _consume(url: str, batch: list[dict[bytes, bytes]]) -> tuple[str, list[Envelope]]:
    """XADD `batch` then one good entry; run a consumer until the good one is handled."""
    stream = f"fuzz{os.getpid()}-{next(_streams)}"
    store = RedisStore(url)
    seen: list[Envelope] = []

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope)

    raw = store.client
    for fields in batch:
        await raw.xadd(stream_key(stream), fields)  # type: ignore[arg-type]
    good = Envelope("call", "turn", time.time() + 30, uuid.uuid4().hex, {"text": "after poison"})
    await Bus(store).publish(stream, good)
    consumer = Consumer(Bus(store), ConsumerConfig(stream, "fuzzers", "c1"), handler)
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(10):
            while not seen or await _pending(raw, stream):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    return stream, seen


async def _pending(raw: Any, stream: str) -> int:
    return int((await raw.xpending(stream_key(stream), "fuzzers"))["pending"])


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for every example (each example uses its own stream)."""
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        yield server
        server.stop()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(poison, min_size=1, max_size=4))
def test_poison_is_dead_lettered_with_a_reason_and_good_work_goes_on(
    shared_redis: RedisServer, batch: list[dict[bytes, bytes]]
) -> None:
    counted = rejected("bus", "undecodable")
    stream, seen = asyncio.run(_consume(shared_redis.url, batch))
    assert [e.body for e in seen] == [{"text": "after poison"}]
    dead = [
        fields
        for _id, fields in redis.Redis(port=shared_redis.port).xrange(DEAD_LETTER)
        if fields[b"dl_stream"] == stream.encode()
    ]
    assert len(dead) == len(batch)
    assert all(fields[b"dl_reason"].startswith(b"undecodable: ") for fields in dead)
    assert rejected("bus", "undecodable") == counted + len(batch)


# --------------------------------------------------------------------------- configuration

OPENAI_KEY = "sk-fuzz-MARKER-0123456789"
ARI_PASSWORD = "ari-fuzz-MARKER-9876543210"
SECRET_VARIABLES = {"OPENAI_API_KEY": OPENAI_KEY, "VAGENT_ARI_PASSWORD": ARI_PASSWORD}


def _variable(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"VAGENT_{name.upper()}"


VARIABLES = sorted(_variable(name) for name in Settings.model_fields)

# Any text an environment can hold: no NUL; lone surrogates only as os.environ
# makes them from bytes that are not UTF-8 (U+DC80..U+DCFF).
env_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
    | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, categories=["Cs"]),
    max_size=30,
)
TRICKY = ["", " ", "0", "-1", "nan", "inf", "1e400", "9" * 5000, "::1:2223", "a b:1", "x:0"]
env_values = env_text | st.sampled_from(TRICKY)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Only `values` and the secret markers, from a directory without a .env file."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as empty:
        for key in list(os.environ):
            if key.startswith(("VAGENT_", "OPENAI_")):
                patch.delenv(key)
        patch.chdir(empty)
        for key, value in {**SECRET_VARIABLES, **values}.items():
            patch.setenv(key, value)
        yield


def _settings_or_error(values: dict[str, str]) -> Settings | ConfigError:
    with _environment(values):
        try:
            return load_settings()
        except ConfigError as error:
            return error


def _assert_clear(error: ConfigError, secrets: list[str]) -> None:
    message = str(error)
    named = [*VARIABLES, "VAGENT_ENV_FILE", "settings file"]
    for line in message.splitlines():
        assert any(variable in line for variable in named), line
    for secret in secrets:
        assert secret not in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([v for v in VARIABLES if v not in SECRET_VARIABLES]), env_values)
@example("VAGENT_RTPENGINE_NG", "::1:2223")  # regression: accepted, then crashed the controller
@example("VAGENT_ARI_USER", "caf\udcc3")  # regression: accepted, then crashed the events link
def test_any_value_of_one_variable_is_settings_or_an_error_naming_it(
    variable: str, value: str
) -> None:
    result = _settings_or_error({variable: value})
    if isinstance(result, ConfigError):
        _assert_clear(result, list(SECRET_VARIABLES.values()))
        assert variable in str(result) or "VAGENT_MEDIA_MODE" in str(result)
        return
    for text in (result.ari_user, result.ari_app, str(result.home), result.rtpengine_ng or ""):
        text.encode("utf-8")  # usable in a header, a path, a datagram


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(VARIABLES), env_values, max_size=6))
def test_any_environment_is_settings_or_clear_errors_without_secrets(
    values: dict[str, str],
) -> None:
    # A secret variable drawn here keeps a marker, so "is it in the message" means something.
    for key in SECRET_VARIABLES.keys() & values.keys():
        values[key] = SECRET_VARIABLES[key] + values[key]
    secrets = [{**SECRET_VARIABLES, **values}[key] for key in SECRET_VARIABLES]
    result = _settings_or_error(values)
    if isinstance(result, ConfigError):
        _assert_clear(result, secrets)
    else:
        assert not any(secret in repr(result) for secret in secrets)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
@example(b"VAGENT_PORT_BASE=\xff\xfe\n")  # regression: UnicodeDecodeError traceback
@example(b"VAGENT_ARI_USER=a\x00b\n")  # regression: NUL accepted into a header value
@example(b"OPENAI_API_KEY=" + OPENAI_KEY.encode() + b"\nVAGENT_PORT_BASE=x\n")
def test_any_env_file_is_settings_or_a_clear_error(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".env") as env_file:
        env_file.write(data)
        env_file.flush()
        result = _settings_or_error({"VAGENT_ENV_FILE": env_file.name})
    if isinstance(result, ConfigError):
        _assert_clear(result, list(SECRET_VARIABLES.values()))


def test_an_env_file_name_too_long_for_the_system_is_a_config_error() -> None:
    """Regression: Path.is_file() raised OSError (ENAMETOOLONG) as a traceback."""
    result = _settings_or_error({"VAGENT_ENV_FILE": "x" * 5000})
    assert isinstance(result, ConfigError) and "VAGENT_ENV_FILE" in str(result)


def test_config_accepts_only_ng_addresses_the_controller_can_use() -> None:
    """Regression: config checked host:port loosely; the controller's parser then
    raised at start-up on what config had let through (bare IPv6, spaces)."""
    for value in ("::1:2223", "a b:2223", "udp:host:2223", "[::1]:99999"):
        result = _settings_or_error({"VAGENT_RTPENGINE_NG": value})
        assert isinstance(result, ConfigError), value
        assert str(result).startswith("VAGENT_RTPENGINE_NG is invalid")
    accepted = _settings_or_error({"VAGENT_RTPENGINE_NG": "[::1]:2223"})
    assert isinstance(accepted, Settings)


def test_a_value_with_bytes_that_are_not_utf8_is_refused_without_echoing_it() -> None:
    result = _settings_or_error({"VAGENT_ARI_PASSWORD": ARI_PASSWORD + "\udcff"})
    assert isinstance(result, ConfigError)
    assert "VAGENT_ARI_PASSWORD is invalid (contains bytes that are not UTF-8)" in str(result)
    _assert_clear(result, [ARI_PASSWORD])


def test_a_body_nested_past_the_stack_is_poison_not_a_crash() -> None:
    with pytest.raises(PoisonMessage, match="undecodable field"):
        decode({**VALID, b"body": DEEP})
