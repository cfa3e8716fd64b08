"""Processes identified with their start time, so that a recycled PID is never signalled: a
process record is ``{"pid", "start", "name"}``. The project's one walk of a process tree
(``descendants``), used by the link lab, the deployment tests and the memory bench."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def alive(proc: Mapping) -> bool:
    return start_time(int(proc["pid"])) == proc["start"]


def descendants(pid: int) -> list[dict]:
    """The live descendants of ``pid`` (parents before children) as process records."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        st = start_time(child.pid)
        if st is not None:
            found.append({"pid": child.pid, "start": st, "name": f"child:{process_name(child)}"})
    return found


def process_name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"


def terminate(procs: Sequence[Mapping], timeout_s: float) -> list[dict]:
    """SIGTERM the live ``procs`` and their descendants, SIGKILL what is left after
    ``timeout_s``; returns the processes still alive at the end (should be none)."""
    targets: dict[int, dict] = {}
    for proc in procs:
        if alive(proc):
            targets.setdefault(int(proc["pid"]), dict(proc))
            for child in descendants(int(proc["pid"])):
                targets.setdefault(child["pid"], child)
    if not targets:
        return []

    def send(sig: int) -> None:
        for proc in targets.values():
            if alive(proc):
                try:
                    os.kill(int(proc["pid"]), sig)
                except ProcessLookupError:
                    pass

    def wait(seconds: float) -> list[dict]:
        deadline = time.monotonic() + seconds
        while True:
            left = [p for p in targets.values() if alive(p)]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    send(signal.SIGTERM)
    if wait(timeout_s):
        send(signal.SIGKILL)
    return wait(5.0)
