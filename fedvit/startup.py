"""When this process started, from the OS's record, so a ClientApp's start-up counts the
interpreter and every import. Standard library only: it is imported before torch."""

from __future__ import annotations

import os
import time
from functools import lru_cache


def process_start_time(pid: int | str = "self") -> float:
    """When process ``pid`` started (s since the epoch), up to one tick (10 ms) early: Linux keeps
    ticks since boot (``/proc/<pid>/stat`` field 22, proc(5)). OSError: not Linux, no process."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
    return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")


@lru_cache(maxsize=1)
def _boot_time() -> float:
    """Boot on ``time.time()``'s scale, to the µs (``/proc/stat``'s ``btime`` is whole s)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
