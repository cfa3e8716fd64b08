"""A Grid wrapper: times pushes and pulls, polls promptly, never waits for nodes gone.

Flower 1.41's ``HttpGrid.send_and_receive`` (every ``flwr run``) sleeps 3 s between pulls,
rounding a round up to 3 s; FedAvg's sampling waits forever for its nodes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from fedvit.keys import CONFIG, SERVER_ROUND

POLL_S = 0.05


class TooFewNodes(RuntimeError):
    """Fewer nodes than the configured minimum stayed connected."""


class RunEnding(BaseException):
    """Flower's exit handlers ran: the next grid call or record stops the run's thread."""


@dataclass
class GridTimes:
    """Server wall clock: ``pushes[round]`` (start, end) of each push call; ``pushed[id]``
    when message ``id``'s call returned; ``pulled[id]`` when the reply *to* it was pulled."""

    pushes: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    pushed: dict[str, float] = field(default_factory=dict)
    pulled: dict[str, float] = field(default_factory=dict)


class TimedGrid:
    """The grid the strategy runs on (``get_node_ids``, ``send_and_receive``: all it calls)."""

    def __init__(self, grid: Grid, min_nodes: int, wait_s: float, poll_s: float = POLL_S) -> None:
        self._grid = grid
        self._min_nodes, self._wait_s, self._poll_s = min_nodes, wait_s, poll_s
        self.times = GridTimes()
        self.ending = threading.Event()  # set by Flower's exit handler: raise RunEnding

    def _check_ending(self) -> None:
        if self.ending.is_set():
            raise RunEnding("the run is being stopped: no further round")

    def get_node_ids(self) -> list[int]:
        """Connected nodes; waits up to ``wait_s`` for ``min_nodes``, then ``TooFewNodes``."""
        deadline = time.monotonic() + self._wait_s
        while len(ids := list(self._grid.get_node_ids())) < self._min_nodes:
            self._check_ending()
            if time.monotonic() > deadline:
                raise TooFewNodes(f"{len(ids)} nodes connected for {self._wait_s:.0f} s, fewer "
                                  f"than 'min-nodes' = {self._min_nodes}: stopping the run")
            time.sleep(0.5)
        return ids

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """Push, then pull every ``poll_s`` until all replies are in, ``timeout`` s (None: no
        limit) passed or the nodes owing one left; the replies in the order they came.
        ``RunEnding`` is checked before the push and every poll."""
        self._check_ending()
        messages = list(messages)
        if not messages:
            return []
        r = int(messages[0].content[CONFIG][SERVER_ROUND])  # FedAvg injects it
        t0 = time.time()
        ids = list(self._grid.push_messages(messages))
        t1 = time.time()
        self.times.pushes.setdefault(r, []).append((t0, t1))
        pending = {i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True) if i}
        self.times.pushed.update(dict.fromkeys(pending, t1))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self._grid.pull_messages(set(pending)))
            now = time.time()
            replies.extend(got)
            for m in got:
                pending.pop(m.metadata.reply_to_message_id, None)
                self.times.pulled[m.metadata.reply_to_message_id] = now
            self._check_ending()
            if pending:
                alive = set(self._grid.get_node_ids())
                pending = {i: node for i, node in pending.items() if node in alive}
                time.sleep(self._poll_s)
        return replies
