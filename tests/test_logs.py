"""Log lines: service and call_id on each, JSON when asked, secrets never."""

from __future__ import annotations

import json
import logging

import pytest

from vagent.services.logs import call_id_var, configure_logging

SECRET = "sk-live-abcdef0123456789"
PASSWORD = "ari-pass-42"


@pytest.fixture(autouse=True)
def restore_root() -> object:
    handlers = logging.getLogger().handlers[:]
    yield None
    logging.getLogger().handlers[:] = handlers


def test_text_lines_scrub_secrets_and_carry_call_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("llm_service", "text", "INFO", [SECRET, PASSWORD])
    token = call_id_var.set("vagent-lab-1795950775.0")
    try:
        logging.getLogger("vagent.test").info("calling with key %s", SECRET)
    finally:
        call_id_var.reset(token)
    try:
        raise ValueError(f"http://vagent:{PASSWORD}@127.0.0.1:8088 refused")
    except ValueError:
        logging.getLogger("vagent.test").exception("ARI failed")
    err = capsys.readouterr().err
    assert SECRET not in err and PASSWORD not in err
    lines = err.splitlines()
    assert "llm_service call=vagent-lab-1795950775.0 vagent.test: calling with key ***" in lines[0]
    assert "ARI failed" in lines[1] and "***" in err


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("tts_service", "json", "INFO", [SECRET])
    token = call_id_var.set("c1")
    try:
        logging.getLogger("vagent.test").warning("key=%s", SECRET)
    finally:
        call_id_var.reset(token)
    logging.getLogger("vagent.test").info("no call")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert records[0]["service"] == "tts_service"
    assert records[0]["call_id"] == "c1"
    assert records[0]["message"] == "key=***"
    assert records[0]["level"] == "WARNING"
    assert "call_id" not in records[1]
