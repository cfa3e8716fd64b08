"""The Grid wrapper: a clear stop below min-nodes, and no endless wait for a node that left."""

from __future__ import annotations

import pytest

from server_app.grid import TimedGrid, TooFewNodes


class FakeGrid:
    """Nodes come and go by script; replies arrive for the nodes listed in ``answering``."""

    def __init__(self, nodes: list[list[int]], answering: set[int]) -> None:
        self.nodes, self.answering = nodes, answering
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return self.nodes[min(self.calls - 1, len(self.nodes) - 1)]

    def push_messages(self, messages):
        return [f"m{m.metadata.dst_node_id}" for m in messages]

    def pull_messages(self, ids):
        return [Reply(i) for i in ids if int(i[1:]) in self.answering]


class Meta:
    def __init__(self, dst: int = 0, reply_to: str = "") -> None:
        self.dst_node_id, self.reply_to_message_id = dst, reply_to


class Msg:
    def __init__(self, dst: int) -> None:
        self.metadata = Meta(dst=dst)
        self.content = {"config": {"server-round": 3}}


class Reply:
    def __init__(self, msg_id: str) -> None:
        self.metadata = Meta(reply_to=msg_id)


def test_fewer_than_min_nodes_is_a_clear_stop():
    grid = TimedGrid(FakeGrid([[1, 2, 3], [1]], set()), min_nodes=2, wait_s=0.2)
    assert grid.get_node_ids() == [1, 2, 3]
    with pytest.raises(TooFewNodes, match="1 nodes connected .* fewer than 'min-nodes' = 2"):
        grid.get_node_ids()


def test_waiting_ends_when_a_node_has_left():
    # Node 3 never answers and disappears from the federation after the first poll.
    grid = TimedGrid(FakeGrid([[1, 2, 3], [1, 2]], {1, 2}), min_nodes=2, wait_s=1)
    replies = grid.send_and_receive([Msg(1), Msg(2), Msg(3)], timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m1", "m2"]
    (push,) = grid.times.pushes[3]
    assert set(grid.times.pulled) == {"m1", "m2"}
    assert push[0] <= push[1] <= min(grid.times.pulled.values())
