"""A Grid wrapper: times sending and waiting, polls replies promptly, and never waits
forever for nodes that are gone.

* Flower 1.41's ``HttpGrid.send_and_receive`` (every ``flwr run``) sleeps 3 s between two
  pulls, so a round's wall time is rounded up to the next 3 s; this wrapper uses the same
  public ``push_messages``/``pull_messages`` API but polls every ``POLL_S``.
* A message whose destination node has left the federation gets no reply: the wait for it
  ends as soon as the node is gone (the books then count the failure in its round).
* FedAvg's node sampling waits forever for ``min_available_nodes``; ``get_node_ids`` here
  raises ``TooFewNodes`` once fewer than ``min_nodes`` have been connected for ``wait_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.05


class TooFewNodes(RuntimeError):
    """Fewer nodes than the configured minimum stayed connected."""


@dataclass
class GridTimes:
    """Seconds spent pushing messages and waiting for replies, per round."""

    send_s: dict[int, float] = field(default_factory=dict)
    wait_s: dict[int, float] = field(default_factory=dict)


class TimedGrid:
    """Delegates everything else to ``grid``."""

    def __init__(self, grid: Grid, min_nodes: int, wait_s: float,
                 poll_s: float = POLL_S) -> None:
        self._grid = grid
        self._min_nodes, self._wait_s, self._poll_s = min_nodes, wait_s, poll_s
        self.times = GridTimes()

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        """Connected nodes; waits up to ``wait_s`` for ``min_nodes``, then ``TooFewNodes``."""
        deadline = time.monotonic() + self._wait_s
        while len(ids := list(self._grid.get_node_ids())) < self._min_nodes:
            if time.monotonic() > deadline:
                raise TooFewNodes(
                    f"{len(ids)} nodes connected for {self._wait_s:.0f} s, fewer than "
                    f"'min-nodes' = {self._min_nodes}: stopping the run"
                )
            time.sleep(0.5)
        return ids

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        r = int(messages[0].content["config"]["server-round"])  # FedAvg injects it
        t0 = time.perf_counter()
        ids = list(self._grid.push_messages(messages))
        t1 = time.perf_counter()
        pending = {i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True) if i}
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self._grid.pull_messages(set(pending)))
            replies.extend(got)
            for m in got:
                pending.pop(m.metadata.reply_to_message_id, None)
            if pending:
                alive = set(self._grid.get_node_ids())
                pending = {i: node for i, node in pending.items() if node in alive}
                time.sleep(self._poll_s)
        t2 = time.perf_counter()
        self.times.send_s[r] = self.times.send_s.get(r, 0.0) + t1 - t0
        self.times.wait_s[r] = self.times.wait_s.get(r, 0.0) + t2 - t1
        return replies
