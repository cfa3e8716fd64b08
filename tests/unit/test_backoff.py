"""A fresh ClientApp process's back-off while its message downloads (``fedvit.wire.links.
message_wait_s``) in the deployment view (``NodeTimes.path``), numbers by hand."""

from __future__ import annotations

import pytest

from fedvit import keys
from fedvit.wire.links import DEFAULT_COSTS, Link, WireCosts, message_wait_s
from server_app.timeline import FixedCosts, NodeTimes

FIXED = FixedCosts(1.0, 3.0, 0.5)
NO_CALLS = WireCosts(0.0, 0.0, 0.0)  # bytes in frames only: a download is bytes ÷ rate


@pytest.mark.parametrize(("download_s", "wait_s"), [
    (0.0, 0.75), (0.75, 0.75), (1.0, 1.75), (2.9, 3.75), (3.75, 3.75), (7.0, 7.75),
    (11.8, 15.75), (17.5, 25.75), (26.0, 35.75), (36.0, 45.75)])
def test_the_process_gets_its_message_at_the_first_ask_after_the_download(download_s,
                                                                          wait_s):
    # asks 0.75 s after the process start, then back-off 1, 2, 4, 8, 10, 10, ... s
    assert message_wait_s(download_s) == wait_s


def _fresh(link: Link) -> NodeTimes:
    """A fresh reply: pushed at 0, process start 0.5, its message at 4.5 (pickup 0.5,
    start-up 4.0), 1 s of compute, returned at 6.0 (return 0.5); 1,448,000 B each way in
    one object."""
    stamps = dict.fromkeys(keys.STAMPS, 4.5)
    stamps.update({keys.PROCESS_START: 0.5, keys.COMPUTE_END: 5.5, keys.HANDLER_OUT: 5.5,
                   keys.MOD_OUT: 5.5})
    compute = dict.fromkeys(keys.COMPUTE_ROWS, 0.0)
    compute[keys.COMPUTE_ROWS[0]] = 1.0
    return NodeTimes(1, "train", 7, 0, True, 0.0, 6.0, stamps, compute, 0.0, 0.0,
                     1_448_000, 1_448_000, 1, 1, link)


def test_a_slow_link_adds_the_back_off_past_its_download():
    # own link: 1514 kB in frames at 8 Mbit/s = 1.514 s down -> the process asked at 0.75,
    # 1.75 s: 4.5 - 1.75 = 2.75 s of its pickup + start-up were its own (imports)
    node = _fresh(Link(8.0, 8.0, 0.0, real=True))
    own = node.path(node.link, FIXED, NO_CALLS)
    up = node.link.up_s(node.up_bytes, node.up_objects, NO_CALLS)
    assert own["pickup"] + own["start-up"] + own["transfer"] - up == pytest.approx(4.5)
    # at 1 Mbit/s the download takes 12.112 s, the process gets it at 15.75 s
    slow = node.path(Link(1.0, 1.0, 0.0), FIXED, NO_CALLS)
    down = 12.112
    assert slow["pickup"] + slow["start-up"] == pytest.approx(2.75 + 15.75 - down)
    assert slow["transfer"] == pytest.approx(down + 12.112)
    # a warm process (not fresh) keeps the fixed costs: no back-off
    warm = NodeTimes(**{**node.__dict__, "fresh": False})
    assert warm.path(Link(1.0, 1.0, 0.0), FIXED, DEFAULT_COSTS)["start-up"] == 3.0
