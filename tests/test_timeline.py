"""Round timing and the link projection, on hand-made rounds with known numbers."""

from __future__ import annotations

import pytest

from fedvit.config import AppConfig, ConfigError
from fedvit.links import Link, node_link, transfer_seconds
from server_app.timeline import round_times, union_length
from strategies import BookRow, Books, RoundLog
from strategies.timing import ClientReport


def test_transfer_time_is_latency_plus_bits_over_bandwidth():
    assert transfer_seconds(1_250_000, 10.0, 50.0) == pytest.approx(0.05 + 1.0)
    link = Link(down_mbps=100.0, up_mbps=10.0, latency_ms=0.0)
    assert link.down_s(12_500_000) == pytest.approx(1.0)
    assert link.up_s(12_500_000) == pytest.approx(10.0)


def test_union_length_counts_overlaps_once():
    assert union_length([(0, 2), (1, 3), (5, 6)]) == 4
    assert union_length([(0, 10), (2, 3)]) == 10
    assert union_length([]) == 0


def _client(node: int, start: float, end: float, link: Link, **phases: float) -> ClientReport:
    metrics = {"compute-start": start, "compute-end": end, **link.as_metrics()}
    metrics.update({f"time-{k}": v for k, v in phases.items()})
    return ClientReport(node, "train", metrics)


def _books(sizes: dict[int, tuple[int, int]]) -> Books:
    books = Books()
    for node, (down, up) in sizes.items():
        books.rows.append(BookRow(1, "train", node, "down", down, down))
        books.rows.append(BookRow(1, "train", node, "up", up, up))
    return books


def test_projection_is_exact_and_the_slowest_node_sets_the_round():
    fast = Link(100.0, 100.0, 10.0)
    slow = Link(1.0, 0.5, 200.0)
    log = RoundLog(start=1000.0, configure_s=0.01, aggregate_s=0.2)
    # Node 1 computes longer but has a fast link; node 2 is slower overall by its link.
    log.clients = [_client(1, 1000.1, 1003.1, fast, forward=1.0, backward=1.5),
                   _client(2, 1000.1, 1001.1, slow, forward=0.4, backward=0.5)]
    books = _books({1: (1_000_000, 1_000_000), 2: (1_000_000, 500_000)})
    times = round_times(1, log, books, send_s=0.0, wait_s=3.0, central_eval_s=0.3,
                        end=1003.6)
    node2 = (0.2 + 8.0) + 1.0 + (0.2 + 8.0)  # 1 MB at 1 Mbit/s, 0.5 MB at 0.5 Mbit/s
    assert times.slowest_node == 2
    assert times.projected_s == pytest.approx(0.01 + node2 + 0.2 + 0.3)
    assert times.projected["communication"] == pytest.approx(16.4)
    assert times.projected["forward"] == pytest.approx(0.4)
    # Simulated: wall clock of the round; critical path = the union of compute intervals.
    assert times.wall_s == pytest.approx(3.6)
    assert times.critical_compute_s == pytest.approx(3.0)
    assert sum(times.simulated.values()) == pytest.approx(times.wall_s)


def test_two_waves_on_shared_cpus_make_a_longer_critical_path():
    link = Link(10.0, 10.0, 0.0)
    log = RoundLog(start=0.0)
    log.clients = [_client(1, 0.0, 1.0, link), _client(2, 0.0, 1.2, link),
                   _client(3, 1.0, 2.0, link), _client(4, 1.2, 2.1, link)]
    times = round_times(1, log, _books({n: (0, 0) for n in range(1, 5)}), 0.0, 0.0, 0.0, 2.2)
    assert times.critical_compute_s == pytest.approx(2.1)


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
