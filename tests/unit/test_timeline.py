"""Round timing and the link projection, on hand-made rounds with known numbers."""

from __future__ import annotations

import pytest

from fedvit import keys
from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.wire.links import (
    FRAME_FACTOR,
    OBJECT_CALL_S,
    PULL_OBJECT_BYTES,
    PUSH_OBJECT_BYTES,
    Link,
    WireCosts,
    node_link,
)
from server_app.grid import GridTimes
from server_app.timeline import FixedCosts, NodeTimes, RoundTimes, critical_path, round_times, sweep
from strategies import BookRow, Books, RoundLog
from strategies.timing import ClientReport


def test_transfer_time_is_latency_plus_wire_bits_over_bandwidth():
    link = Link(down_mbps=100.0, up_mbps=10.0, latency_ms=0.0)
    # A message's bytes travel in TCP/IP/Ethernet frames (1448 payload bytes per 1514)...
    assert link.down_s(12_500_000) == pytest.approx(1.0 * 1514 / 1448)
    assert link.up_s(12_500_000) == pytest.approx(10.0 * 1514 / 1448)
    # ...and each of its objects is one call, two in flight: many small objects cost half a
    # call each (handling + round trip + their bytes), bulk objects their bytes' time, and
    # a message at least one call carrying all its bytes (the last call's handling).
    small = Link(down_mbps=100.0, up_mbps=10.0, latency_ms=0.0)
    bytes_s = 10 * PULL_OBJECT_BYTES * 8 / 100e6
    assert small.down_s(0, 10) == pytest.approx(10 * (OBJECT_CALL_S + bytes_s / 10) / 2)
    bulk = 100_000_000 * FRAME_FACTOR + 10 * PUSH_OBJECT_BYTES
    assert small.up_s(100_000_000, 10) == pytest.approx(OBJECT_CALL_S + bulk * 8 / 10e6)
    # a packed message: 6 objects, one holding nearly every byte: one call and its bytes
    far = Link(down_mbps=8.0, up_mbps=8.0, latency_ms=50.0)
    packed = 1_000_000 * FRAME_FACTOR + 6 * PULL_OBJECT_BYTES
    assert far.down_s(1_000_000, 6) == pytest.approx(0.05 + OBJECT_CALL_S + 0.1
                                                     + packed * 8 / 8e6)
    far = Link(down_mbps=100.0, up_mbps=10.0, latency_ms=50.0)
    assert far.down_s(0, 10) - small.down_s(0, 10) == pytest.approx(0.05 + 10 * 0.05)


def _client(node: int, t0: float, compute: tuple[float, float], link: Link, *,
            fresh: bool = False, process_start: float = 0.0, pulled_after: float = 0.0,
            msg: str = "", **phases: float) -> ClientReport:
    """A reply whose message was pushed at ``t0``: the mod gets it at compute start - 0.03,
    task build 0.01, deserialise 0.02, compute as given, serialise 0.01, mod 0.01."""
    a, b = compute
    metrics = {keys.PROCESS_START: process_start, keys.MOD_IN: a - 0.03,
               keys.HANDLER_IN: a - 0.03, keys.TASK_BUILT: a - 0.02, keys.COMPUTE_START: a,
               keys.COMPUTE_END: b, keys.HANDLER_OUT: b + 0.01, keys.MOD_OUT: b + 0.02,
               keys.FRESH: int(fresh), keys.BOOKS_S: 0.01, keys.TRANSFER_S: 0.0,
               "partition-id": node - 1, **link.as_metrics()}
    metrics.update({f"time-{k}": v for k, v in phases.items()})
    return ClientReport(node, "train", metrics, msg or f"m{node}")


def _grid(t0: float, pulled: dict[str, float]) -> GridTimes:
    return GridTimes(pushes={1: [(t0 - 0.01, t0)]}, pushed=dict.fromkeys(pulled, t0),
                     pulled=pulled)


def _books(sizes: dict[int, tuple[int, int]]) -> Books:
    books = Books()
    for node, (down, up) in sizes.items():
        books.rows.append(BookRow(1, "train", node, "down", down, down))
        books.rows.append(BookRow(1, "train", node, "up", up, up))
    return books


FIXED = FixedCosts(pickup_s=1.5, startup_s=5.0, return_s=0.5)


def test_a_missing_push_or_pull_time_is_a_logged_warning(monkeypatch):
    warned = []
    monkeypatch.setattr("server_app.timeline.log", lambda level, msg, *a: warned.append(msg % a))
    report = _client(1, 10.0, (11.0, 12.0), Link(100.0, 100.0, 0.0), msg="m7")
    node = NodeTimes.from_report(1, report, GridTimes(), _books({1: (8, 8)}))
    assert (node.pushed, node.pulled) == (11.0 - 0.03, 12.0 + 0.02)  # the node's stamps
    assert len(warned) == 1 and "no push or pull time of message 'm7'" in warned[0]
    kept = NodeTimes.from_report(1, report, _grid(10.0, {"m7": 13.0}), _books({1: (8, 8)}))
    assert (kept.pushed, kept.pulled, len(warned)) == (10.0, 13.0, 1)


def test_projection_is_exact_and_the_slowest_node_sets_the_round():
    fast = Link(100.0, 100.0, 10.0)
    slow = Link(1.0, 0.5, 200.0)
    log = RoundLog(start=1000.0, configure_s=0.01, aggregate_s=0.2,
                   server=[("configure", 1000.0, 1000.01), ("aggregation", 1003.2, 1003.4)])
    # Node 1 computes longer but has a fast link; node 2 is slower overall by its link.
    log.clients = [_client(1, 1000.02, (1000.1, 1003.1), fast, forward=1.0, backward=1.5),
                   _client(2, 1000.02, (1000.1, 1001.1), slow, forward=0.4, backward=0.5)]
    books = _books({1: (1_000_000, 1_000_000), 2: (1_000_000, 500_000)})
    grid = _grid(1000.02, {"m1": 1003.15, "m2": 1001.15})
    times, nodes = round_times(1, log, books, grid, (1003.4, 1003.7), FIXED)
    node2_transfer = (0.2 + 8.0 * FRAME_FACTOR) * 2  # 1 MB at 1 Mbit/s, 0.5 MB at 0.5 Mbit/s
    work = 0.01 + 0.02 + 1.0 + 0.01 + 0.01  # task build, deserialise, compute, serialise, books
    server = 0.01 + 0.01 + 0.2 + 0.3  # configure, send, aggregation, central evaluation
    assert times.slowest_node == 2
    assert times.projected["transfer"] == pytest.approx(node2_transfer)
    assert times.projected["forward"] == pytest.approx(0.4)
    assert times.projected_s == pytest.approx(server + node2_transfer + work)
    # As a deployment: each reused-process reply pays the configured fixed costs, whose
    # start-up includes the task build.
    assert times.deployment_s == pytest.approx(times.projected_s - 0.01 + 1.5 + 5.0 + 0.5)
    assert times.deployment["start-up"] == 5.0 and times.deployment["pickup"] == 1.5
    # Measured: the round's wall clock, every second given to one row.
    assert times.wall_s == pytest.approx(3.7)
    assert sum(times.measured.values()) == pytest.approx(times.wall_s)
    assert times.critical_compute_s == pytest.approx(3.0)
    assert [n.node_id for n in nodes] == [1, 2]


def test_the_wire_costs_price_the_projection_and_are_recorded_with_it():
    link = Link(10.0, 10.0, 25.0)
    log = RoundLog(start=0.0)
    log.clients = [_client(1, 0.0, (0.1, 1.0), link)]
    books = Books([BookRow(1, "train", 1, "down", 800, 1000, objects=10),
                   BookRow(1, "train", 1, "up", 800, 2000, objects=20)])
    grid = _grid(0.0, {"m1": 1.1})
    default, _ = round_times(1, log, books, grid, (1.1, 1.2), FIXED)
    costs = WireCosts(call_s=0.005, pull_object_bytes=100, push_object_bytes=200,
                      source="calibrated")
    times, _ = round_times(1, log, books, grid, (1.1, 1.2), FIXED, lambda _: costs)
    # Per message: the latency, then each object half a call (handling + 50 ms round trip +
    # its bytes), its bytes framed in TCP/IP frames plus the per-object framing.
    down = 0.025 + 10 * (0.005 + 0.05 + (1000 * FRAME_FACTOR + 10 * 100) * 8 / 10e6 / 10) / 2
    up = 0.025 + 20 * (0.005 + 0.05 + (2000 * FRAME_FACTOR + 20 * 200) * 8 / 10e6 / 20) / 2
    assert times.projected["transfer"] == pytest.approx(down + up)
    assert default.projected["transfer"] > times.projected["transfer"]  # 17 ms handling
    assert times.costs == costs and default.costs.call_s == OBJECT_CALL_S
    row = times.as_row()
    assert (row["call-s"], row["pull-object-bytes"], row["push-object-bytes"]) == (
        0.005, 100, 200)
    assert RoundTimes.from_row(row).costs == WireCosts(0.005, 100.0, 200.0)


def test_every_second_of_a_deployment_round_is_attributed():
    # One fresh ClientApp process: pushed at 10.0, the OS starts it at 11.0, imports until
    # the mod gets the message at 13.0; task built 13.0 -> 13.5; compute 13.6 -> 14.6.
    link = Link(10.0, 10.0, 0.0)
    c = _client(1, 10.0, (14.0, 15.0), link, fresh=True, process_start=11.0)
    c.metrics.update({keys.MOD_IN: 13.0, keys.HANDLER_IN: 13.0, keys.TASK_BUILT: 13.5})
    log = RoundLog(start=9.9, configure_s=0.09, server=[("configure", 9.9, 9.99)])
    log.clients = [c]
    times, (node,) = round_times(1, log, _books({1: (0, 0)}), _grid(10.0, {"m1": 15.5}),
                                 (15.6, 15.8), FIXED)
    m = times.measured
    assert m["pickup"] == pytest.approx(1.0)  # push -> process start
    assert m["start-up"] == pytest.approx(2.0)  # process start -> mod
    assert m["task-build"] == pytest.approx(0.5)
    assert m["deserialise"] == pytest.approx(0.5)
    assert m["return"] == pytest.approx(15.5 - 15.02)
    assert m["unexplained"] == pytest.approx(0.1)  # pulled 15.5, central evaluation 15.6
    assert sum(m.values()) == pytest.approx(times.wall_s) == pytest.approx(5.9)
    # The fresh reply's own costs replace the configured ones in the deployment view...
    assert times.deployment["start-up"] == pytest.approx(2.0)
    assert times.deployment["pickup"] == pytest.approx(1.0)
    # ...and the simulation view leaves them out.
    assert times.projected["start-up"] == times.projected["task-build"] == 0.0


def test_a_real_links_transfer_is_not_counted_twice():
    real = Link(8.0, 8.0, 0.0, real=True)
    c = _client(1, 10.0, (14.0, 15.0), real, fresh=True, process_start=12.0)
    c.metrics.update({keys.MOD_IN: 13.0, keys.HANDLER_IN: 13.0, keys.TASK_BUILT: 13.5})
    log = RoundLog(start=10.0)
    log.clients = [c]
    books = _books({1: (1_000_000, 1_000_000)})  # 1 s (plus framing) each way at 8 Mbit/s
    times, _ = round_times(1, log, books, _grid(10.0, {"m1": 16.5}), (16.6, 16.7), FIXED)
    one_way = FRAME_FACTOR
    assert times.measured["pickup"] == pytest.approx(2.0)
    assert times.measured["start-up"] == pytest.approx(1.0)
    # The download lies inside pickup + start-up (3 s measured): 3 - 1.046 s are waits.
    assert times.deployment["pickup"] + times.deployment["start-up"] == pytest.approx(
        3.0 - one_way)
    assert times.deployment["return"] == pytest.approx(16.5 - 15.02 - one_way)
    assert times.deployment["transfer"] == pytest.approx(2 * one_way)


def test_start_up_is_counted_from_the_os_process_start():
    import subprocess
    import sys
    import time

    # The child's first line runs after the interpreter started: a timer started by the
    # code would see no start-up at all; the OS's record sees the interpreter's.
    code = ("import time; t = time.time(); from fedvit.startup import process_start_time; "
            "print(t - process_start_time(), process_start_time())")
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    after = time.time()
    lag, started = map(float, out.stdout.split())
    assert before - 0.011 <= started <= after  # one 10 ms clock tick of resolution
    assert 0 < lag < after - before + 0.011


def test_the_critical_path_is_the_node_whose_whole_path_is_longest():
    # Node 7 moves the most bytes and node 8 works the longest; node 9 is slowest overall.
    paths = {7: {"forward": 0.1, "transfer": 2.0}, 8: {"forward": 1.9, "transfer": 0.1},
             9: {"forward": 1.2, "transfer": 1.0}}
    assert critical_path(paths) == 9
    assert critical_path({5: {"transfer": 1.0}, 6: {"forward": 1.0}}) == 5  # first of equals
    with pytest.raises(ValueError, match="no critical path"):
        critical_path({})


def test_overlapping_intervals_count_once_by_priority():
    swept = sweep([("pickup", 0.0, 4.0), ("compute", 1.0, 2.0), ("return", 3.0, 5.0),
                   ("configure", 1.5, 2.5)], 0.0, 6.0)
    assert swept == pytest.approx({"pickup": 1.5, "configure": 1.0, "compute": 0.5,
                                   "return": 2.0, "unexplained": 1.0})


def test_two_waves_on_shared_cpus_make_a_longer_critical_path():
    link = Link(10.0, 10.0, 0.0)
    log = RoundLog(start=0.0)
    log.clients = [_client(1, 0.0, (0.1, 1.0), link), _client(2, 0.0, (0.1, 1.2), link),
                   _client(3, 0.0, (1.1, 2.0), link), _client(4, 0.0, (1.3, 2.1), link)]
    grid = _grid(0.0, {f"m{n}": 2.2 for n in range(1, 5)})
    times, _ = round_times(1, log, _books({n: (0, 0) for n in range(1, 5)}), grid,
                           (2.2, 2.2), FIXED)
    assert times.critical_compute_s == pytest.approx(2.0)  # 0.1 -> 2.1, no gap
    assert times.measured["pickup"] == pytest.approx(0.1 - 0.03 - 0.0)


@pytest.mark.parametrize("key,value", [("link-down-mbps", 0.0), ("link-up-mbps", -5.0),
                                       ("link-latency-ms", -1.0),
                                       ("link-profile", "satellite")])
def test_bad_link_in_run_config_is_a_config_error(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' = "):
        AppConfig.from_run_config({key: value, "weights-path": ""})


def test_node_config_overrides_and_is_validated():
    cfg = AppConfig.from_run_config({"weights-path": ""})
    assert node_link(cfg, {}, 0) == Link(10.0, 10.0, 50.0)
    assert node_link(cfg, {"link-up-mbps": 2.5}, 0) == Link(10.0, 2.5, 50.0)
    with pytest.raises(ConfigError, match="node config 'link-down-mbps' = 0"):
        node_link(cfg, {"link-down-mbps": 0}, 0)


def test_heterogeneous_links_are_seeded_per_partition():
    cfg = AppConfig.from_run_config({"weights-path": "", "link-profile": "heterogeneous"})
    links = [node_link(cfg, {}, pid) for pid in range(4)]
    assert links == [node_link(cfg, {}, pid) for pid in range(4)]
    assert len({link.down_mbps for link in links}) == 4
    assert all(1.0 <= link.down_mbps <= 10.0 and 25 <= link.latency_ms <= 100
               for link in links)


def test_num_threads_and_link_real_in_node_config_are_validated():
    from client_app.task import node_threads

    assert node_threads({}) is None
    assert node_threads({"num-threads": 2}) == 2
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ConfigError, match="node config 'num-threads' = "):
            node_threads({"num-threads": bad})
    cfg = AppConfig.from_run_config({"weights-path": ""})
    assert node_link(cfg, {"link-real": True}, 0).real
    assert not node_link(cfg, {}, 0).real
    with pytest.raises(ConfigError, match="node config 'link-real' = 'yes'"):
        node_link(cfg, {"link-real": "yes"}, 0)
