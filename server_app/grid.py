"""A Grid wrapper that times sending and waiting, and polls replies promptly.

Flower 1.41's ``HttpGrid.send_and_receive`` (every ``flwr run``) sleeps 3 s between two
pulls, so a round's wall time is rounded up to the next 3 s. This wrapper uses the same
public ``push_messages``/``pull_messages`` API but polls every ``POLL_S``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.02


@dataclass
class GridTimes:
    """Seconds spent pushing messages and waiting for replies, per round."""

    send_s: dict[int, float] = field(default_factory=dict)
    wait_s: dict[int, float] = field(default_factory=dict)


class TimedGrid:
    """Delegates everything to ``grid``; ``send_and_receive`` is timed per round."""

    def __init__(self, grid: Grid, poll_s: float = POLL_S) -> None:
        self._grid = grid
        self._poll_s = poll_s
        self.times = GridTimes()

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        r = int(messages[0].content["config"]["server-round"])  # FedAvg injects it
        t0 = time.perf_counter()
        pending = {i for i in self._grid.push_messages(messages) if i}
        t1 = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(self._poll_s)
        t2 = time.perf_counter()
        self.times.send_s[r] = self.times.send_s.get(r, 0.0) + t1 - t0
        self.times.wait_s[r] = self.times.wait_s.get(r, 0.0) + t2 - t1
        return replies
