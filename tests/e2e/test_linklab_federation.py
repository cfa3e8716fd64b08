"""A federation in the link lab: real processes, one node behind a real slow link.

2 SuperNodes, node 1 shaped to 0.25 Mbit/s both ways, 2 rounds of fedlora on the tiny ViT.
Checks that the slow node's measured transfer (how long the kernel saw its link busy with
each message) is within tolerance of the projection (message bytes × 8 ÷ rate), that the
kernel counted at least the books' bytes on every link in both directions, that the
deployment's rounds are attributed, and that nothing of the lab is left behind.
"""

from __future__ import annotations

import json

import pytest

from fedvit import keys
from fedvit.wire.links import Link
from server_app.calibration import CounterSampler
from server_app.timeline import NodeTimes, RoundTimes
from tools.deploy.linklab import LinkLab
from tools.deploy.linklab.netns import LinkLabError, check_privileges, netns_list

SLOW_MBPS = 0.25
RUN = {"strategy": "fedlora", "model-name": "test_vit", "img-size": 16, "patch-size": 4,
       "weights-path": "", "num-server-rounds": 2, "local-epochs": 1}


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    try:
        check_privileges()
    except LinkLabError as err:
        pytest.skip(f"the link lab cannot run here: {err}")
    work = tmp_path_factory.mktemp("linklab")
    lab = LinkLab([None, (SLOW_MBPS, SLOW_MBPS)], work / "lab")
    with lab:
        superlink = next(p["pid"] for p in lab.processes() if p["name"] == "superlink")
        with CounterSampler(superlink) as sampler:
            lab.flwr_run({**RUN, "outputs-dir": str(work / "out"), "run-name": "run"},
                         timeout_s=600)
        slow_if = lab.superlink_if(1)
    run = work / "out" / "run"
    return {
        "lab": lab, "sampler": sampler, "slow_if": slow_if,
        "summary": json.loads((run / "summary.json").read_text()),
        "nodes": [NodeTimes.from_row(r) for r in json.loads((run / "nodes.json").read_text())],
        "phases": [RoundTimes.from_row(r)
                   for r in json.loads((run / "phases.json").read_text())],
    }


def test_the_slow_nodes_transfer_matches_its_projection(lab_run):
    # Round 2: round 1's adapters hold identical zero B matrices, which Flower's object
    # store sends once while the books count each.
    # The download happens between the push and the handler, the upload after it.
    (slow,) = [n for n in lab_run["nodes"] if n.partition_id == 1 and n.round == 2]
    link = Link(SLOW_MBPS, SLOW_MBPS, 0.0)
    windows = {"down": (slow.pushed, slow.stamps[keys.MOD_IN]),
               "up": (slow.stamps[keys.MOD_OUT], slow.pulled)}
    for direction, projected in (("down", link.down_s(slow.down_bytes, slow.down_objects)),
                                 ("up", link.up_s(slow.up_bytes, slow.up_objects))):
        measured = lab_run["sampler"].busy_span(lab_run["slow_if"], direction,
                                                *windows[direction])
        assert projected > 1.5  # ~60 kB: long enough to measure at 10 ms
        assert 0.8 <= measured / projected <= 1.3, (direction, measured, projected)


def test_the_summary_names_each_nodes_real_link(lab_run):
    links = lab_run["summary"]["links"]
    assert links["profile"] == "node-config" and links["latency-ms"] == 0
    assert (links["nodes"]["1"]["link-down-mbps"], links["nodes"]["1"]["link-real"]) == (
        SLOW_MBPS, 1.0)


def test_the_kernel_counted_at_least_the_books(lab_run):
    wire = lab_run["summary"]["wire"]
    assert set(wire) == {"0", "1"}
    for w in wire.values():
        for d in ("down", "up"):
            assert w[f"{d}-books-bytes"] > 0
            assert w[f"{d}-wire-per-books"] >= 1.0


def test_every_reply_came_from_a_fresh_process_and_the_round_is_attributed(lab_run):
    assert all(n.fresh for n in lab_run["nodes"])  # Flower 1.41: one process per message
    for n in lab_run["nodes"]:
        assert n.pushed <= n.stamps[keys.PROCESS_START] <= n.stamps[keys.MOD_IN]
    for times in lab_run["phases"]:
        assert times.measured["start-up"] > 0 and times.measured["pickup"] > 0
        assert sum(times.measured.values()) == pytest.approx(times.wall_s)
        assert times.unexplained_share < 0.10


def test_nothing_of_the_lab_is_left_behind(lab_run):
    lab = lab_run["lab"]
    assert lab.leftovers() == []
    assert not any(ns.startswith(f"ll-{lab.tag}-") for ns in netns_list())
