"""The link lab's kernel side: ``ip`` and ``tc`` commands, root checks, htb shaping."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Sequence

MTU_FRAME = 1514
LEAF_LIMIT_PACKETS = 1000


class LinkLabError(RuntimeError):
    """A lab could not be started, used or stopped (the message says why)."""


def run(argv: Sequence[str], check: bool = True, timeout: float = 30
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LinkLabError(f"`{' '.join(argv)}` failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def check_privileges() -> None:
    """Raise LinkLabError at once unless this process is root with working `ip netns` / `tc`."""
    if os.geteuid() != 0:
        raise LinkLabError("the link lab needs root (network namespaces, veth pairs, tc): "
                           f"running as uid {os.geteuid()}")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise LinkLabError(f"the link lab needs `{tool}` (iproute2), not found on PATH")
    for argv in (["ip", "netns", "list"], ["tc", "-V"], ["tc", "qdisc", "show", "dev", "lo"]):
        try:
            run(argv, timeout=10)
        except (LinkLabError, OSError, subprocess.TimeoutExpired) as err:
            raise LinkLabError(f"the link lab needs a working `{' '.join(argv)}`: {err}") from err


def netns_list() -> set[str]:
    out = run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def mbit(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise LinkLabError(f"{what} must be a positive number of Mbit/s or None, got {value!r}")
    return value


def latencies(value: float | Sequence[float | None] | None, count: int
               ) -> list[float | None]:
    """One latency (ms, >= 0, or None) per node from one value or a sequence.

    Raises:
        LinkLabError: a negative or non-finite value, or a sequence of another length.
    """
    values = [value] * count if value is None or isinstance(value, (int, float)) \
        else list(value)
    if len(values) != count:
        raise LinkLabError(f"latency_ms: one value or {count} (one per node), got {value!r}")
    for i, v in enumerate(values):
        if v is not None and not (math.isfinite(float(v)) and float(v) >= 0):
            raise LinkLabError(f"node {i} latency must be >= 0 ms or None, got {v!r}")
    return [None if v is None else float(v) for v in values]


def htb_commands(ns: str, dev: str, mbps: float | None) -> list[list[str]]:
    """The tc commands that shape ``dev`` (in ``ns``) at ``mbps`` (None: remove the shaping)."""
    tc = ["tc", "-n", ns]
    if mbps is None:
        return [tc + ["qdisc", "del", "dev", dev, "root"]]
    rate_bit = max(8, round(mbps * 1e6))
    burst = max(2 * MTU_FRAME, math.ceil(rate_bit / 8 * 0.002))
    return [
        tc + ["qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
        tc + ["class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
              "rate", f"{rate_bit}bit", "ceil", f"{rate_bit}bit", "burst", str(burst),
              "cburst", str(burst), "quantum", str(MTU_FRAME)],
        tc + ["qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", "pfifo",
              "limit", str(LEAF_LIMIT_PACKETS)],
    ]


def has_htb_root(ns: str, dev: str) -> bool:
    out = run(["tc", "-n", ns, "-j", "qdisc", "show", "dev", dev]).stdout
    return any(q.get("kind") == "htb" and q.get("root") and q.get("handle") == "1:"
               for q in json.loads(out or "[]"))


def apply_shaping(ns: str, dev: str, mbps: float | None) -> None:
    """Shape ``dev`` at ``mbps`` (None: unshaped). On a link shaped already only the class
    and the leaf change (`tc qdisc replace` of an htb root is not supported)."""
    commands = htb_commands(ns, dev, mbps)
    if mbps is not None and has_htb_root(ns, dev):
        commands = commands[1:]
    for argv in commands:
        proc = run(argv, check=False)
        if proc.returncode != 0:
            unshaped_already = mbps is None and (
                "Cannot delete qdisc with handle of zero" in proc.stderr
                or "No such file or directory" in proc.stderr)
            if not unshaped_already:
                raise LinkLabError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
