"""Worker processes that exit soon after the process that started them dies (a `kill -9` leaves nothing running).

A loky worker (a sweep's, a report's) watches its parent from a thread of its
own and exits once the parent is gone: nobody will read what it computes. The
watch must start before the worker's slow imports (torch, pandas: 2 s or more
on a loaded machine), or a parent killed meanwhile leaves the worker running
them to the end. So the parent names itself in the worker's environment
(`child_environment`, loky's `env`), and `import sortrl`, the first sortrl
module a worker imports, starts the watch (`watch_from_environment`); a forked
process, which has sortrl imported already, starts it from its initializer
(`watch_parent`). Only the standard library is imported here.
"""

from __future__ import annotations

import os
import threading
import time

PARENT_VARIABLE = "SORTRL_WATCH_PARENT"
"""The environment variable that names (by process id) the parent a new worker process watches."""

WATCH_SECONDS = 0.2
"""How often a worker checks that its parent is alive: it exits within this long of the parent's death (a
`getppid` call five times a second costs nothing measurable)."""

_watching: set[int] = set()


def child_environment() -> dict[str, str]:
    """What to add to a worker process's environment so that it watches this process from its first `import sortrl`."""
    return {PARENT_VARIABLE: str(os.getpid())}


def watch_from_environment() -> None:
    """Watch the parent `SORTRL_WATCH_PARENT` names (set for sortrl's own workers only): exit at once if this process
    is no longer its child (it died while this process started).

    The variable is removed, so this process's own children do not inherit it.
    Whether a parent that is not ours any more is alive says nothing: killed
    and not yet waited for, it is a zombie, which is still there.
    """
    named = os.environ.pop(PARENT_VARIABLE, "")
    if named.isdigit():
        watch_parent(int(named))


def watch_parent(parent: int) -> None:
    """Exit this process (`os._exit(1)`) within `WATCH_SECONDS` of `parent` no longer being its parent (it died: this
    process was handed to init); at once if it is not now. Watching the same parent twice starts one thread."""
    if parent in _watching:
        return
    _watching.add(parent)
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="sortrl-watch-parent").start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)
