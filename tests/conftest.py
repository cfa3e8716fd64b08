"""The test tiers, and test-session facts printed in pytest's header (a CI log then says
what machine ran it).

Tiers, by folder: ``unit/`` (seconds: modules and strategy add-ons on their own, mock
replies, no Ray), ``simulation/`` (whole federations under ``run_simulation``), ``e2e/``
(real Flower processes, kernel links, ``flwr run``: marked ``slow`` here, so
``pytest -m "not slow"`` is the quick tier).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

E2E = Path(__file__).parent / "e2e"


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under ``tests/e2e/`` is ``slow``."""
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.slow)
