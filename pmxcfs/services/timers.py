"""One clock for the periodic jobs of the cluster services (the DFSM verify timer, the sync
marker): a tick a second, as the reference's 1 s timer event."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import trio


class Ticker:
    def __init__(
        self,
        callbacks: Sequence[Callable[[float], None]],
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.callbacks = tuple(callbacks)
        self.interval = interval
        self.clock = clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            now = self.clock()
            for cb in self.callbacks:
                cb(now)
