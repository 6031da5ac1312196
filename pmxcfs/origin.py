"""Who caused the tree change being applied right now.

True while a change is applied for a syscall that is waiting for its result (the filesystem's
own request, or our own cluster message answering it): the kernel learns that result from the
reply, so its caches need no invalidation. Everything else (other nodes, resyncs, lock expiry)
leaves it False. A context variable, so each trio task has its own value.
"""

from __future__ import annotations

import contextvars

local_request: contextvars.ContextVar[bool] = contextvars.ContextVar("local_request", default=False)
