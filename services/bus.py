"""The bus: Redis Streams with one consumer group per service.

Work that must not be lost (a caller's turn) goes through streams, never
pub/sub: an entry stays pending until a consumer acknowledges it, and the
entries of a consumer that died are claimed by another (XAUTOCLAIM).

Every message is an `Envelope`: schema version, call_id, turn_id, a
deadline, and a msg_id that makes handling idempotent. The deadline is when
the work becomes useless; `budget_at` is when the caller should already hear
the answer, which the stages aim for (see turn.py). A consumer

* skips work whose deadline has passed (a late answer on a phone call is useless),
* skips a msg_id it has already handled (a claimed entry may have been half done),
* sends what it cannot decode, or what keeps failing, to the dead-letter
  stream with the reason, and carries on. Nothing crashes a consumer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from vagent.services import metrics
from vagent.services.logs import call_id_var
from vagent.services.redis_client import RedisStore

log = logging.getLogger("vagent.bus")

SCHEMA_VERSION = 1
PREFIX = "vagent"
DEAD_LETTER = f"{PREFIX}:dead"
STREAM_MAXLEN = 10_000
RESULT_TTL_S = 300
DONE_TTL_S = 900


def stream_key(name: str) -> str:
    return f"{PREFIX}:{name}"


def result_key(call_id: str) -> str:
    """Replies go to a stream per call, read by the controller that owns the call."""
    return f"{PREFIX}:results:{call_id}"


class PoisonMessage(ValueError):
    """An entry that can never be handled; the message is the dead-letter reason."""


@dataclass(frozen=True)
class Envelope:
    call_id: str
    turn_id: str
    deadline: float  # time.time() epoch seconds
    msg_id: str
    body: dict[str, Any] = field(default_factory=dict)
    audio: bytes = b""
    version: int = SCHEMA_VERSION
    budget_at: float = 0.0  # 0: the deadline itself

    @property
    def budget(self) -> float:
        return self.budget_at or self.deadline

    @property
    def expired(self) -> bool:
        return time.time() >= self.deadline

    def fields(self) -> dict[str, str | bytes]:
        return {
            "v": str(self.version),
            "call_id": self.call_id,
            "turn_id": self.turn_id,
            "deadline": repr(self.deadline),
            "budget_at": repr(self.budget),
            "msg_id": self.msg_id,
            "body": json.dumps(self.body, separators=(",", ":")),
            "audio": self.audio,
        }

    def follow_up(
        self, msg_id: str, body: dict[str, Any], audio: bytes = b"", deadline: float | None = None
    ) -> Envelope:
        """The next message of the same turn, by default with the same deadline."""
        return Envelope(
            self.call_id,
            self.turn_id,
            deadline or self.deadline,
            msg_id,
            body,
            audio,
            budget_at=self.budget,
        )


def decode(fields: dict[bytes, bytes]) -> Envelope:
    """Parse a stream entry, or raise PoisonMessage saying what is wrong with it."""
    text = {k.decode(errors="replace"): v for k, v in fields.items()}
    missing = [k for k in ("v", "call_id", "turn_id", "deadline", "msg_id") if k not in text]
    if missing:
        raise PoisonMessage(f"missing fields: {', '.join(missing)}")
    try:
        version = int(text["v"])
        deadline = float(text["deadline"])
        budget_at = float(text.get("budget_at", text["deadline"]))
        body = json.loads(text.get("body", b"{}") or b"{}")
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; RecursionError is a body nested
        # deeper than the interpreter's stack, which json.loads does not catch.
        raise PoisonMessage(f"undecodable field: {str(exc)[:200]}") from None
    if version != SCHEMA_VERSION:
        raise PoisonMessage(f"schema version {version}, this consumer reads {SCHEMA_VERSION}")
    if not (math.isfinite(deadline) and math.isfinite(budget_at)):
        # NaN or infinity never passes: such work would never be skipped as late.
        raise PoisonMessage("deadline and budget_at must be finite epoch seconds")
    if not isinstance(body, dict):
        raise PoisonMessage("body is not a JSON object")
    try:
        ids = [text[k].decode() for k in ("call_id", "turn_id", "msg_id")]
    except UnicodeDecodeError:
        raise PoisonMessage("ids are not UTF-8") from None
    if not all(ids):
        # An empty msg_id would make every such entry a "duplicate" of the first.
        raise PoisonMessage("call_id, turn_id and msg_id must not be empty")
    audio = text.get("audio", b"")
    return Envelope(ids[0], ids[1], deadline, ids[2], body, audio, version, budget_at)


class Bus:
    """Publishing, through the Redis policy layer."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def publish(self, stream: str, envelope: Envelope) -> None:
        fields = envelope.fields()
        await self.store.call(
            lambda r: r.xadd(stream_key(stream), fields, maxlen=STREAM_MAXLEN, approximate=True),  # type: ignore[arg-type]
            deadline=envelope.deadline,
        )

    async def publish_result(self, envelope: Envelope) -> None:
        key, fields = result_key(envelope.call_id), envelope.fields()

        async def send(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.xadd(key, fields, maxlen=1000, approximate=True)
                pipe.expire(key, RESULT_TTL_S)
                await pipe.execute()

        await self.store.call(send)

    async def dead_letter(
        self, stream: str, entry_id: str, fields: dict[Any, Any], reason: str
    ) -> None:
        record: dict[Any, Any] = {
            k if isinstance(k, bytes) else str(k): v for k, v in fields.items()
        }
        record.update({b"dl_stream": stream, b"dl_entry": entry_id, b"dl_reason": reason})
        await self.store.call(
            lambda r: r.xadd(DEAD_LETTER, record, maxlen=STREAM_MAXLEN, approximate=True)
        )
        metrics.DEAD_LETTERS.labels(stream).inc()
        log.warning("dead-lettered %s %s: %s", stream, entry_id, reason)


Handler = Callable[[Envelope], Awaitable[None]]


@dataclass
class ConsumerConfig:
    """`claim_idle_ms` is short on purpose: a turn left by a dead consumer must be
    taken over while it can still be answered. Live consumers keep their
    in-flight entries from being claimed by touching them every third of it."""

    stream: str
    group: str
    consumer: str
    concurrency: int = 32
    block_ms: int = 250
    claim_idle_ms: int = 600
    max_deliveries: int = 3


class Consumer:
    """One consumer of a group: reads, claims, dedups, skips, dead-letters, acks."""

    def __init__(self, bus: Bus, config: ConsumerConfig, handler: Handler) -> None:
        self.bus = bus
        self.config = config
        self.handler = handler
        self.key = stream_key(config.stream)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._last_claim = 0.0

    async def _redis(self, command: Callable[[Any], Awaitable[Any]]) -> Any:
        return await self.bus.store.call(command)

    async def ensure_group(self) -> None:
        try:
            await self._redis(
                lambda r: r.xgroup_create(self.key, self.config.group, id="0", mkstream=True)
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Loop until cancelled; a Redis outage pauses it, never ends it."""
        keeper = asyncio.create_task(self._keep_inflight())
        try:
            while True:
                try:
                    await self.ensure_group()
                    while True:
                        await self._claim_abandoned()
                        await self._read_new()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s consumer paused: %s", self.config.stream, exc)
                    await asyncio.sleep(0.5)
        finally:
            keeper.cancel()
            await self._drain()

    async def _read_new(self) -> None:
        free = self.config.concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.sleep(0.01)
            return
        reply = await self._redis(
            lambda r: r.xreadgroup(
                self.config.group,
                self.config.consumer,
                {self.key: ">"},
                count=free,
                block=self.config.block_ms,
            )
        )
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._spawn(entry_id.decode(), fields, deliveries=1)

    async def _claim_abandoned(self) -> None:
        """Take over entries a dead consumer left pending."""
        now = time.monotonic()
        if now - self._last_claim < self.config.claim_idle_ms / 3000:
            return
        self._last_claim = now
        _next, entries, *_ = await self._redis(
            lambda r: r.xautoclaim(
                self.key,
                self.config.group,
                self.config.consumer,
                min_idle_time=self.config.claim_idle_ms,
                start_id="0-0",
                count=self.config.concurrency,
            )
        )
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if fields is None or entry_id in self._inflight:
                continue
            metrics.BUS_MESSAGES.labels(self.config.stream, "claimed").inc()
            self._spawn(entry_id, fields, await self._deliveries(entry_id))

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self._redis(
            lambda r: r.xpending_range(
                self.key, self.config.group, min=entry_id, max=entry_id, count=1
            )
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _keep_inflight(self) -> None:
        """Reset the idle time of entries being handled, so no one claims them."""
        while True:
            await asyncio.sleep(self.config.claim_idle_ms / 3000)
            ids = list(self._inflight)
            if not ids:
                continue
            try:
                await self._redis(
                    lambda r, ids=ids: r.xclaim(  # type: ignore[misc]
                        self.key, self.config.group, self.config.consumer, 0, ids, justid=True
                    )
                )
            except Exception as exc:
                log.debug("could not refresh in-flight entries: %s", exc)

    def _spawn(self, entry_id: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        task = asyncio.create_task(self._process(entry_id, fields, deliveries))
        self._inflight[entry_id] = task
        task.add_done_callback(lambda _: self._inflight.pop(entry_id, None))

    async def _drain(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _process(self, entry_id: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        stream = self.config.stream
        try:
            envelope = decode(fields)
        except PoisonMessage as exc:
            metrics.REJECTED_INPUT.labels("bus", "undecodable").inc()
            await self._dead(entry_id, fields, f"undecodable: {exc}")
            return
        token = call_id_var.set(envelope.call_id)
        try:
            await self._handle(entry_id, envelope, fields, deliveries)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.BUS_MESSAGES.labels(stream, "failed").inc()
            log.exception("handling %s %s failed (delivery %d)", stream, entry_id, deliveries)
            if deliveries >= self.config.max_deliveries:
                await self._dead(entry_id, fields, f"failed {deliveries} times: {exc!r}")
        finally:
            call_id_var.reset(token)

    async def _handle(
        self, entry_id: str, envelope: Envelope, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        stream = self.config.stream
        if deliveries > self.config.max_deliveries:
            await self._dead(entry_id, fields, f"delivered {deliveries} times without an ack")
            return
        if envelope.expired:
            metrics.BUS_MESSAGES.labels(stream, "expired").inc()
            await self._ack(entry_id)
            return
        if not await self._take(envelope.msg_id, entry_id):
            metrics.BUS_MESSAGES.labels(stream, "duplicate").inc()
            await self._ack(entry_id)
            return
        try:
            await self.handler(envelope)
        except BaseException:
            await self._redis(lambda r: r.delete(self._owner_key(envelope.msg_id)))
            raise
        await self._ack(entry_id)
        metrics.BUS_MESSAGES.labels(stream, "handled").inc()

    def _owner_key(self, msg_id: str) -> str:
        return f"{PREFIX}:owner:{self.config.group}:{msg_id}"

    async def _take(self, msg_id: str, entry_id: str) -> bool:
        """Atomically make this entry the one that handles msg_id.

        A second entry with the same msg_id (a duplicate publish) loses; the
        same entry delivered again after its consumer died wins again.
        """
        key = self._owner_key(msg_id)
        if await self._redis(lambda r: r.set(key, entry_id, nx=True, ex=DONE_TTL_S)):
            return True
        owner = await self._redis(lambda r: r.get(key))
        return owner is not None and owner.decode() == entry_id

    async def _ack(self, entry_id: str) -> None:
        await self._redis(lambda r: r.xack(self.key, self.config.group, entry_id))

    async def _dead(self, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        await self.bus.dead_letter(self.config.stream, entry_id, fields, reason)
        await self._ack(entry_id)
        metrics.BUS_MESSAGES.labels(self.config.stream, "dead_letter").inc()
