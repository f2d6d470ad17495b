"""Running blocking client calls off the event loop."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")


class BlockingRunner:
    """Runs blocking calls in a bounded thread pool.

    A backend either receives an executor from the host (shared, not shut down here) or owns
    one of ``max_workers`` threads that ``close()`` shuts down.
    """

    def __init__(self, *, executor: Optional[concurrent.futures.Executor], max_workers: int,
                 name: str) -> None:
        if executor is None and max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._owned = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=name
        )

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        if self._owned:
            self._executor.shutdown(wait=True)
