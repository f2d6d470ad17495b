"""Test-only backends loaded by running servers through ``module:Class`` in their config."""
import time

from dji_media import PeeweeMediaStore


class SlowMediaStore(PeeweeMediaStore):
    """A SQLite store whose writes take ``delay`` seconds (in its worker thread), so a test can
    shut the server down while a callback is in flight."""

    def __init__(self, *, delay: float = 1.0, **options) -> None:
        super().__init__(**options)
        self._delay = delay

    async def upsert(self, workspace_id, file):
        await self._runner.run(time.sleep, self._delay)
        return await super().upsert(workspace_id, file)

    async def save(self, workspace_id, file):  # what the callbacks call
        await self._runner.run(time.sleep, self._delay)
        await super().save(workspace_id, file)
