"""Waiting for the next event of a hot fd *outside* trio's scheduler while trio is idle.

Shared by the libqb IPC server (the next request of a request/response client) and the CPG
dispatch loop (the next delivery): both would otherwise pay a scheduler round trip and an
epoll re-arm per event, more than handling it.
"""

from __future__ import annotations

import collections
import select
import time
from collections.abc import Callable
from typing import Any

import trio

#: the longest one hot wait lasts (then the pump waits through trio once; trio's deadlines end
#: it sooner)
HOT_WAIT = 0.05


class HotWait:
    """The pump's wait for the next request *outside* trio's scheduler, while trio is idle.

    A request/response client (PVE::IPCC) sends its next request a few microseconds after
    its answer.  Waiting for it through trio costs a scheduler round trip and an epoll
    re-arm per request, more than serving it.  Instead, when no other task is runnable,
    the pump blocks in this epoll, which holds libqb's fds *and trio's own epoll fd*: any
    of trio's events (an fd, a signal, a thread's ``run_sync_soon``, which all make trio's
    epoll readable) ends the wait at once, and so do a task that a served request made
    runnable, trio's next deadline and ``HOT_WAIT``.  So nothing of trio's waits longer
    than it would have; the thread merely sleeps in this epoll instead of trio's.

    This reads trio's run loop where it has no public API: its run queue, its tasks'
    "scheduled" mark (``_next_send_fn``, also set for tasks later in the running batch)
    and its epoll object.  :meth:`create` returns None when they are not as expected
    (another trio version or I/O backend, guest mode); the pump then always waits
    through trio, which is complete on its own.
    """

    def __init__(self, runq: Any, tasks: Any, trio_fd: int) -> None:
        self.runq = runq
        self.tasks = tasks
        self.trio_fd = trio_fd
        self.epoll = select.epoll()
        self.epoll.register(trio_fd, select.EPOLLIN)

    @classmethod
    def create(cls) -> HotWait | None:
        try:
            from trio._core._run import GLOBAL_RUN_CONTEXT

            runner = GLOBAL_RUN_CONTEXT.runner
            runq, tasks = runner.runq, runner.tasks
            trio_fd = runner.io_manager._epoll.fileno()
            me = trio.lowlevel.current_task()
            if (
                runner.is_guest
                or not isinstance(runq, collections.deque)
                or not isinstance(tasks, set)
                or me not in tasks
                or me._next_send_fn is not None
            ):
                return None
            return cls(runq, tasks, trio_fd)
        except Exception:  # anything unexpected: no hot wait, the plain path is complete
            return None

    def idle(self) -> bool:
        """No task is scheduled: none queued, none later in the batch running now."""
        return not self.runq and all(t._next_send_fn is None for t in self.tasks)

    def run(self, serve: Callable[[list[tuple[int, int]]], bool | None]) -> None:
        """Serve events until trio has something to do (or HOT_WAIT is over, or *serve*
        returns False)."""
        if not self.idle():
            return
        budget = min(HOT_WAIT, trio.lowlevel.current_statistics().seconds_to_next_deadline)
        end = time.monotonic() + budget
        poll, trio_fd, runq = self.epoll.poll, self.trio_fd, self.runq
        while True:
            timeout = end - time.monotonic()
            if timeout <= 0:
                return
            ready = poll(timeout)
            if not ready:
                return
            if len(ready) == 1:
                if ready[0][0] == trio_fd:
                    return
                if serve(ready) is False:
                    return
            else:
                mine = [e for e in ready if e[0] != trio_fd]
                if mine and serve(mine) is False:
                    return
                if len(mine) != len(ready):
                    return
            if runq:
                return
