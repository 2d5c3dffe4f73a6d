"""Drive an async Ray Data callable the way an actor with `max_concurrency` N does, without Ray.

Tests and benchmarks call the in-flight describe stage directly: at most N calls are admitted at once, in input
order, and results come back in input order (as Ray Data's async map reorders them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_as_async_actor(call: Callable[[T], Awaitable[R]], batches: Sequence[T], max_concurrency: int) -> list[R]:
    async def drive() -> list[R]:
        gate = asyncio.Semaphore(max_concurrency)

        async def admitted(batch: T) -> R:
            async with gate:
                return await call(batch)

        return list(await asyncio.gather(*(admitted(batch) for batch in batches)))

    return asyncio.run(drive())
