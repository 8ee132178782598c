"""Conversation history per call, in Redis with a TTL, so any replica serves any turn."""

from __future__ import annotations

import json

from vagent.services.redis_client import RedisStore

HISTORY_TTL_S = 3600
MAX_MESSAGES = 20


def history_key(call_id: str) -> str:
    return f"vagent:history:{call_id}"


class History:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def load(self, call_id: str, deadline: float) -> list[dict[str, str]]:
        raw = await self.store.call(
            lambda r: r.lrange(history_key(call_id), -MAX_MESSAGES, -1), deadline=deadline
        )
        return [json.loads(item) for item in raw]

    async def append(self, call_id: str, user: str, assistant: str) -> None:
        key = history_key(call_id)
        entries = [
            json.dumps({"role": "user", "content": user}),
            json.dumps({"role": "assistant", "content": assistant}),
        ]

        async def write(r: object) -> None:
            async with r.pipeline(transaction=True) as pipe:  # type: ignore[attr-defined]
                pipe.rpush(key, *entries)
                pipe.ltrim(key, -MAX_MESSAGES, -1)
                pipe.expire(key, HISTORY_TTL_S)
                await pipe.execute()

        await self.store.call(write)
