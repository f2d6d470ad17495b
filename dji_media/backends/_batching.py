"""Sharing trips to a database thread between concurrent requests.

Handing work to a thread and back costs more than a point read on an indexed table, and a
commit costs an fsync. Under load many requests want the same kind of work in the same turn of
the event loop, so the store hands them over together: reads made in one turn go as one call,
writes queued while a transaction commits go into the next transaction.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, List, Sequence, Tuple, TypeVar

from ..errors import Unavailable

K = TypeVar("K")
R = TypeVar("R")

# Writes per transaction at most: large enough to absorb a burst of callbacks, small enough
# that one transaction never holds the database's write lock for long.
MAX_WRITE_BATCH = 64


def _settle(futures: Sequence["asyncio.Future[Any]"], results: Sequence[Any]) -> None:
    for future, result in zip(futures, results):
        if not future.done():  # the request may have been cancelled meanwhile
            future.set_result(result)


def _fail(futures: Sequence["asyncio.Future[Any]"], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


class ReadBatcher(Generic[K, R]):
    """Point reads requested in one turn of the event loop are answered by one call of
    ``fetch_many(keys)`` (blocking, returns one result per key) run through ``run``."""

    def __init__(self, fetch_many: Callable[[List[K]], List[R]],
                 run: Callable[..., Awaitable[List[R]]]) -> None:
        self._fetch_many = fetch_many
        self._run = run
        self._pending: List[Tuple[K, "asyncio.Future[R]"]] = []

    async def get(self, key: K) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((key, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        asyncio.ensure_future(self._answer(batch))

    async def _answer(self, batch: List[Tuple[K, "asyncio.Future[R]"]]) -> None:
        futures = [future for _, future in batch]
        try:
            results = await self._run(self._fetch_many, [key for key, _ in batch])
        except BaseException as exc:  # every waiter gets the failure, as if it had asked alone
            _fail(futures, exc)
            if not isinstance(exc, Exception):
                raise
            return
        _settle(futures, results)


Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class WriteBatcher:
    """Runs write jobs ``(fn, args)`` through ``write_batch(jobs)`` (a coroutine that runs them
    in one transaction and returns one result per job), one batch at a time.

    A batch that fails is rerun job by job, so that a job's own error (a constraint, a value the
    engine refuses) reaches only its own caller, and the others still commit. When the database
    itself is unavailable every job fails at once: one by one they would each wait for it.
    """

    def __init__(self, write_batch: Callable[[List[Job]], Awaitable[List[Any]]]) -> None:
        self._write_batch = write_batch
        self._queue: List[Tuple[Job, "asyncio.Future[Any]"]] = []
        self._draining = False

    async def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(((fn, args), future))
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:MAX_WRITE_BATCH]
                del self._queue[:MAX_WRITE_BATCH]
                await self._commit(batch)
        finally:
            self._draining = False

    async def _commit(self, batch: List[Tuple[Job, "asyncio.Future[Any]"]]) -> None:
        try:
            results = await self._write_batch([job for job, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, Unavailable):
                _fail([future for _, future in batch], exc)
                return
            for item in batch:  # nothing of the batch was committed: each on its own
                await self._commit([item])
            return
        except BaseException as exc:
            _fail([future for _, future in batch], exc)
            raise
        _settle([future for _, future in batch], results)
