"""Test-session facts printed in pytest's header: a CI log then says what machine ran it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def pytest_report_header() -> list[str]:
    quota = Path("/sys/fs/cgroup/cpu.max")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    free = {d: f"{shutil.disk_usage(d).free / 2**30:.1f}" for d in ("/dev/shm", "/tmp")
            if os.path.isdir(d)}
    return [
        f"machine: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable, "
        f"cgroup cpu.max {quota.read_text().strip() if quota.is_file() else 'n/a'}, "
        f"load average {' '.join(f'{x:.2f}' for x in load)}, "
        f"free GiB {free}, FEDVIT_CACHE={os.environ.get('FEDVIT_CACHE', '(default)')}"
    ]
