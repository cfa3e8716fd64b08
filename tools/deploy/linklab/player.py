"""Playing a link trace onto a running lab: each node's rates (``tc``) and latency (its delay
relay) change at the trace's times, and the wall-clock time of each change is recorded.

A trace (``tools.replay.traces.LinkTraces``: ``changes(partition) -> [(t_s, Link)]``,
piecewise constant, ``t_s`` from the start of the run's first round) becomes one schedule
of ``(t_s, node, down, up, latency)``. A thread waits for the start (at once, or when a
condition holds, e.g. the ServerApp logging its first round), takes that moment as
``t0`` (wall clock, ``time.time()``), and applies each change at ``t0 + t_s``. After the
trace's last row its last values hold. The SuperNodes are not restarted: their node
config keeps the links they started with.

``<workdir>/trace-applied.json`` (rewritten after every change)::

    {"t0": <wall s or null>, "start": "<what started it>",
     "changes": [{"partition": i, "t-s": <scheduled>, "applied-t-s": <applied - t0>,
                  "applied-wall": <wall s>, "down-mbps": D, "up-mbps": U,
                  "latency-ms": L}, ...]}

``applied-wall`` is when the last ``tc`` command of the change returned (a few ms after it
was due on a quiet machine): the moment the kernel shapes at the new rates.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedvit.files import write_json
from tools.deploy.linklab.netns import LinkLabError, latencies
from tools.replay.traces import COLUMNS

APPLIED = "trace-applied.json"
POLL_S = 0.02  # how often a start condition is checked


@dataclass(frozen=True)
class Change:
    """One scheduled change of one node's link (rates None: unshaped)."""

    t_s: float
    node: int
    down_mbps: float | None
    up_mbps: float | None
    latency_ms: float


def schedule(traces, nodes: int, unshaped_mbps: float) -> list[Change]:
    """Every change of nodes ``0..nodes-1`` in time order (a rate of ``unshaped_mbps`` or
    more is unshaped).

    Args:
        traces: ``changes(partition) -> [(t_s, Link)]`` (``tools.replay.traces``).
        nodes: the lab's nodes (partition ``i`` is node ``i``).
        unshaped_mbps: the rate a trace writes for "no shaping".
    """
    def rate(mbps: float) -> float | None:
        return None if mbps >= unshaped_mbps else mbps

    out = [Change(float(t), i, rate(link.down_mbps), rate(link.up_mbps),
                  float(link.latency_ms))
           for i in range(nodes) for t, link in traces.changes(i)]
    return sorted(out, key=lambda c: (c.t_s, c.node))


def log_shows(path: Path, pattern: str) -> Callable[[], bool]:
    """A start condition: ``pattern`` (a regex) appears in what ``path`` gains from now on."""
    offset = path.stat().st_size if path.exists() else 0
    regex = re.compile(pattern.encode())
    seen = b""

    def check() -> bool:
        nonlocal offset, seen
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                new = f.read()
        except OSError:
            return False
        offset += len(new)
        seen = seen[-4096:] + new  # a line split between two reads still matches
        return regex.search(seen) is not None

    return check


class TracePlayer:
    """Applies ``changes`` in a thread (``start``), recording each in ``applied``.

    Args:
        changes: the schedule (``schedule``).
        apply: ``apply(change)`` changes one node's link now.
        workdir: where ``trace-applied.json`` is written.
    """

    def __init__(self, changes: list[Change], apply: Callable[[Change], None],
                 workdir: Path, initial: list[Change] | None = None) -> None:
        self.changes = changes
        self.initial = initial or []  # each node's link when the player was made (t_s 0)
        self.apply = apply
        self.path = Path(workdir) / APPLIED
        self.t0: float | None = None
        self.start_label = ""
        self.applied: list[dict] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, t0: float | None = None, when: Callable[[], bool] | None = None,
              label: str = "") -> TracePlayer:
        """Start playing: at wall-clock ``t0`` (None: now), or once ``when()`` is true."""
        self.start_label = label or ("condition" if when else "at once")
        self._save()
        self._thread = threading.Thread(target=self._run, args=(t0, when), daemon=True,
                                        name="linklab-trace")
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        """Every change applied."""
        return len(self.applied) == len(self.changes)

    def stop(self) -> None:
        """Stop playing (changes not applied yet are dropped; the links keep the values
        last applied)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, t0: float | None, when: Callable[[], bool] | None) -> None:
        try:
            while when is not None and not when():
                if self._stop.wait(POLL_S):
                    return
            self.t0 = time.time() if t0 is None else t0
            self._save()
            for change in self.changes:
                if self._stop.wait(max(0.0, self.t0 + change.t_s - time.time())):
                    return
                self.apply(change)
                wall = time.time()
                self.applied.append({
                    "partition": change.node, "t-s": change.t_s,
                    "applied-t-s": wall - self.t0, "applied-wall": wall,
                    "down-mbps": change.down_mbps, "up-mbps": change.up_mbps,
                    "latency-ms": change.latency_ms})
                self._save()
        except BaseException as err:  # kept for the owner (``LinkLab.stop_trace``)
            self.error = err

    def write_applied(self, path: Path, origin: float, unshaped_mbps: float) -> Path:
        """The trace as it was applied, as a trace file (``tools.replay.traces``) whose
        ``t-s`` count from wall-clock ``origin`` (e.g. the run's first round's start): per
        node, at 0 the link in force at ``origin``, then each change applied after it at its
        applied time. An unshaped direction is written as ``unshaped_mbps``.

        Returns:
            ``path``.
        """
        rows = []
        for node in sorted({c.node for c in self.initial}):
            at_origin = next(c for c in self.initial if c.node == node)
            later = []
            for a in (a for a in self.applied if a["partition"] == node):
                change = Change(a["applied-wall"] - origin, node, a["down-mbps"],
                                a["up-mbps"], a["latency-ms"])
                if change.t_s <= 0:
                    at_origin = change
                else:
                    later.append(change)
            rows += [(0.0, at_origin), *((c.t_s, c) for c in later)]
        text = [f"# {self.path.name} as applied, t-s from wall clock {origin:.6f}",
                ",".join(COLUMNS)]
        for t, c in rows:
            rate = [unshaped_mbps if v is None else v for v in (c.down_mbps, c.up_mbps)]
            text.append(f"{c.node},{t:.6f},{rate[0]:g},{rate[1]:g},{c.latency_ms:g}")
        Path(path).write_text("\n".join(text) + "\n")
        return Path(path)

    def _save(self) -> None:
        write_json(self.path, {"t0": self.t0, "start": self.start_label,
                               "changes": self.applied}, indent=1)


class TraceControl:
    """``LinkLab``'s trace and latency controls (a mixin: it uses the lab's ``running``,
    ``links``, ``latency``, ``shape``, ``processes``, ``workdir`` and supervisor)."""

    unshaped_mbps: float
    player: TracePlayer | None

    def play_trace(self, traces, t0: float | None = None, when=None, label: str = ""
                   ) -> TracePlayer:
        """Play ``traces`` onto the links in a thread (``player``): node ``i`` follows
        partition ``i``; its rates change with ``tc`` and its latency through its relay,
        at wall-clock ``t0`` + each row's ``t-s`` (``t0`` None: now, or when ``when()``
        first holds). No SuperNode restarts: node configs keep the links they started
        with. After the last row the last values hold. A trace playing already is stopped.

        Raises:
            LinkLabError: the lab is not running, or the trace gives a node without a
                relay a latency (before anything changes).
        """
        if not self.running:
            raise LinkLabError("the lab is not running")
        changes = schedule(traces, len(self.links), self.unshaped_mbps)
        for c in changes:
            if c.latency_ms > 0 and self.latency[c.node] is None:
                raise LinkLabError(f"the trace gives node {c.node} a latency of "
                                   f"{c.latency_ms:g} ms at t={c.t_s:g} s, but it has no "
                                   "delay relay: start the lab with a latency for it (--latency; "
                                   "latency_ms in Python)")
        if self.player is not None:
            self.player.stop()
        initial = [Change(0.0, i, down, up, self.latency[i] or 0.0)
                   for i, (down, up) in enumerate(self.links)]
        self.player = TracePlayer(changes, self._apply, self.workdir, initial)
        return self.player.start(t0, when, label)

    def stop_trace(self) -> None:
        """Stop a trace that is playing (the links keep their values).

        Raises:
            LinkLabError: applying a change failed (the player's error).
        """
        if self.player is None:
            return
        self.player.stop()
        if self.player.error is not None:
            raise LinkLabError(f"playing the trace failed: {self.player.error}")

    def _apply(self, change: Change) -> None:
        i = change.node
        if (change.down_mbps, change.up_mbps) != self.links[i]:
            self.shape(i, change.down_mbps, change.up_mbps)
        if self.latency[i] is not None and change.latency_ms != self.latency[i]:
            self.set_latency(i, change.latency_ms)

    def set_latency(self, i: int, latency_ms: float) -> None:
        """Change node ``i``'s one-way latency now (its relay's, for chunks that arrive
        from now on); its node config keeps the latency it started with.

        Raises:
            LinkLabError: the lab is not running, node ``i`` has no relay, or a bad value.
        """
        if not self.running:
            raise LinkLabError("the lab is not running")
        if self.latency[i] is None:
            raise LinkLabError(f"node {i} has no delay relay (start the lab with --latency; "
                               "latency_ms in Python)")
        (latency,) = latencies([latency_ms], 1)
        relay = [p for p in self.processes() if p["name"] == f"relay-{i}"]
        write_json(self._supervisor().relay_control(i), {"latency-ms": latency})
        for proc in relay:
            os.kill(int(proc["pid"]), signal.SIGUSR1)
        self.latency[i] = latency
        self._link_changed(i)

    def write_applied_trace(self, path: Path | str, origin: float) -> Path:
        """The last trace played, as applied, written as a trace file whose times count
        from wall-clock ``origin`` (``TracePlayer.write_applied``).

        Raises:
            LinkLabError: no trace was played.
        """
        if self.player is None:
            raise LinkLabError("no trace was played")
        return self.player.write_applied(Path(path), origin, self.unshaped_mbps)
