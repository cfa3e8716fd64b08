"""When this process started, on the wall clock, from the OS's own record.

A ClientApp's start-up is measured from the moment the OS created its process, not from a
timer started after the imports, so the interpreter's start and every import count. Linux
keeps a process's start as clock ticks since boot (``/proc/<pid>/stat``, field 22, see
proc(5)), counted on ``CLOCK_BOOTTIME``; the boot on the wall clock is ``time.time()`` minus
that clock.

Standard library only: it is imported before torch, so it must cost nothing.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache


def process_start_time(pid: int | str = "self") -> float:
    """Wall-clock time (seconds since the epoch, ``time.time()``'s scale) at which process
    ``pid`` started.

    Args:
        pid: a process id, or ``"self"`` for this process.

    Returns:
        boot time + ``starttime / CLK_TCK``: resolution one clock tick (10 ms at the usual
        ``CLK_TCK`` = 100), so the value is up to one tick early. A wall-clock step (NTP)
        between boot and now shifts it with ``time.time()``, as it should.

    Raises:
        OSError: no ``/proc`` (not Linux) or no such process.
    """
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2:].split()
    start_ticks = int(fields[19])  # field 22 overall
    return _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")


@lru_cache(maxsize=1)
def _boot_time() -> float:
    """The boot on ``time.time()``'s scale: exact to the two reads' microseconds, where
    ``/proc/stat``'s ``btime`` is truncated to whole seconds."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
