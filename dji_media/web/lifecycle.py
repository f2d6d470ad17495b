"""Counting in-flight requests, so that a shutdown can let them finish."""
from __future__ import annotations

import asyncio
from typing import Optional


class InFlight:
    """How many media requests are being handled; ``wait_idle`` resolves when none are."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True if every request finished within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class CountedRequest:
    """For a ``RequestHandler``: counts the request in an ``InFlight`` from ``initialize`` until
    it finishes or its connection closes, once, so that a shutdown waits for it. Call
    ``self.count_in(in_flight)`` from ``initialize``."""

    _in_flight: Optional[InFlight] = None

    def count_in(self, in_flight: Optional[InFlight]) -> None:
        self._in_flight = in_flight
        if in_flight is not None:
            in_flight.enter()

    def on_finish(self) -> None:
        self._leave()

    def on_connection_close(self) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._in_flight is not None:
            self._in_flight.leave()
            self._in_flight = None  # count each request once
