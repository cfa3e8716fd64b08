"""server_app/calibration.py: the link model's per-object framing and per-call handling from
hand-made counter samples, numbers computed by hand."""

from __future__ import annotations

import pytest

from fedvit import keys
from fedvit.wire.links import DEFAULT_COSTS, FRAME_FACTOR, Link, object_seconds, wire_bytes
from server_app.calibration import (
    MIN_OBJECTS,
    CounterSampler,
    WireSample,
    calibrate,
    link_during,
    samples_of,
)
from server_app.timeline import NodeTimes

# 32 objects of 1448 payload bytes each: 1514 bytes in frames, + 486 B framing = 2000 B.
OBJECTS, PAYLOAD, FRAMING = 32, 32 * 1448, 486.0
KERNEL = 32 * 1514 + 32 * 486  # 64,000 bytes on the wire


def call_bound(call_s: float = 0.012, latency_ms: float = 25.0, direction: str = "down"
               ) -> WireSample:
    """A fedlora-like message at 8 Mbit/s: 2 ms of bytes per object, so each object costs
    half a call: (call + 2 × latency + 2 ms) / 2."""
    busy = OBJECTS * (call_s + 2 * latency_ms / 1e3 + 0.002) / 2
    return WireSample(direction, PAYLOAD, OBJECTS, KERNEL, busy, 8.0, latency_ms)


def test_framing_per_object_is_the_kernels_bytes_beyond_the_frames():
    assert call_bound().framing() == pytest.approx(FRAMING)
    assert KERNEL == pytest.approx(PAYLOAD * FRAME_FACTOR + OBJECTS * FRAMING)


def test_a_call_bound_message_gives_the_call_by_inverting_the_model():
    # busy = 32 × (0.012 + 0.050 + 0.002) / 2 = 1.024 s -> call = 2 × 0.032 - 0.050 - 0.002
    sample = call_bound()
    assert sample.busy_s == pytest.approx(1.024)
    assert sample.call_s(FRAMING) == pytest.approx(0.012)
    # ... the model priced with that call gives the measured span back
    costs = calibrate([sample])
    wire = wire_bytes(PAYLOAD, OBJECTS, costs.pull_object_bytes)
    assert object_seconds(wire, OBJECTS, 8.0, 25.0, costs) == pytest.approx(1.024)


def test_a_link_bound_message_says_nothing_about_the_call():
    # fedavg-like: 128 KiB objects at 8 Mbit/s take 0.131 s each, the span is the bytes'
    nbytes = 10 * 131072
    on_link = (nbytes * FRAME_FACTOR / 10 + 500) * 8 / 8e6
    sample = WireSample("up", nbytes, 10, round(nbytes * FRAME_FACTOR + 10 * 500),
                        10 * on_link, 8.0, 0.0)
    assert sample.framing() == pytest.approx(500, abs=0.1)
    assert sample.call_s(500) is None
    costs = calibrate([sample])
    assert costs.call_s == DEFAULT_COSTS.call_s
    assert costs.push_object_bytes == pytest.approx(500, abs=0.1)
    assert costs.pull_object_bytes == DEFAULT_COSTS.pull_object_bytes
    assert costs.source == "link-lab counters, 1 messages; default: call-s, pull-object-bytes"


def test_pooling_takes_medians_and_leaves_out_what_cannot_measure():
    fab = WireSample("down", PAYLOAD, OBJECTS, KERNEL + 358_000, 1.024, 8.0, 25.0)  # + bundle
    dedup = WireSample("down", PAYLOAD, OBJECTS, 30_000, 0.5, 8.0, 25.0)  # fewer than books
    tiny = WireSample("up", 300, MIN_OBJECTS - 1, 9_000, 0.05, 8.0, 25.0)
    samples = [call_bound(0.010), call_bound(0.012), call_bound(0.016), fab, dedup, tiny,
               call_bound(0.012, direction="up")]
    costs = calibrate(samples)
    assert costs.pull_object_bytes == pytest.approx(FRAMING)  # median of 486 ×3 and 11,673
    assert costs.push_object_bytes == pytest.approx(FRAMING)
    # calls: 0.010, 0.012, 0.016, the bundle's (its bytes' time is no longer small: left
    # out), dedup's (0.5 s / 32 × 2 - 0.05 - 0.002 = -0.021: none), up 0.012
    assert costs.call_s == pytest.approx(0.012)
    assert costs.source == "link-lab counters, 5 messages"  # not dedup, not tiny


def test_without_samples_the_defaults_stay():
    assert calibrate([]) is DEFAULT_COSTS
    assert calibrate([]).source == "default"
    tiny = WireSample("down", 300, 2, 9_000, 0.05, 8.0, 0.0)
    assert calibrate([tiny]) is DEFAULT_COSTS


def _node(pushed: float, mod_in: float, mod_out: float, pulled: float) -> NodeTimes:
    stamps = dict.fromkeys(keys.STAMPS, mod_in)
    stamps[keys.MOD_OUT] = mod_out
    return NodeTimes(1, "train", 7, 0, True, pushed, pulled, stamps, {}, 0.0, 0.0,
                     down_bytes=PAYLOAD, up_bytes=PAYLOAD, down_objects=OBJECTS,
                     up_objects=OBJECTS, link=Link(8.0, 8.0, 25.0, real=True))


def test_samples_come_from_each_replys_windows():
    # counters every 0.1 s: 16,000 B a tick down during [1.0, 1.4), 32,000 B up during
    # [3.0, 3.2); (rx, tx) = (up, down) on the SuperLink side
    sampler = CounterSampler(pid=0)
    rx = tx = 0
    for k in range(50):
        t = k / 10
        sampler.samples.append((t, {"ll0s0": (rx, tx), "lo": (0, 0)}))
        tx += 16_000 if 1.0 <= t < 1.4 else 0
        rx += 32_000 if 3.0 <= t < 3.2 else 0
    (down, up) = samples_of([_node(0.5, 2.0, 2.5, 4.0)], sampler, {0: "ll0s0"})
    assert (down.direction, down.kernel_bytes, down.busy_s) == ("down", KERNEL, pytest.approx(0.4))
    assert (up.direction, up.kernel_bytes, up.busy_s) == ("up", KERNEL, pytest.approx(0.2))
    assert (down.mbps, down.latency_ms, down.objects) == (8.0, 25.0, OBJECTS)
    assert samples_of([_node(0.5, 2.0, 2.5, 4.0)], sampler, {1: "ll0s1"}) == []
    sampler.forget_before(3.05)  # keeps the sample that opens the interval across 3.05
    assert sampler.samples[0][0] == pytest.approx(3.0)


def test_the_labs_link_history_prices_the_window_and_a_change_inside_says_no_rate():
    node = _node(0.5, 2.0, 2.5, 4.0)  # node config: 8/8 Mbit/s, 25 ms
    assert link_during(node, [], 0.5, 2.0) == (8.0, 8.0, 25.0)
    history = [(0.0, float("inf"), float("inf"), 0.0), (1.0, 16.0, 4.0, 50.0),
               (3.0, 6.0, 6.0, 50.0)]
    assert link_during(node, history, 1.2, 2.0) == (16.0, 4.0, 50.0)  # since 1.0
    assert link_during(node, history, 0.5, 2.0) == (None, None, 0.0)  # changed at 1.0
    assert link_during(node, history, 3.5, 4.0) == (6.0, 6.0, 50.0)
    sampler = CounterSampler(pid=0)
    sampler.samples += [(k / 10, {"ll0s0": (0, 0)}) for k in range(50)]
    down, up = samples_of([node], sampler, {0: "ll0s0"}, {0: history})
    assert (down.mbps, up.mbps) == (None, None)  # both windows hold a change
    assert down.call_s(FRAMING) is None


def test_a_download_window_opens_when_its_push_call_started():
    # the push call ran 0.2-0.5 s; the node started pulling at 0.3, before the call ended
    sampler = CounterSampler(pid=0)
    tx = 0
    for k in range(30):
        sampler.samples.append((k / 10, {"ll0s0": (0, tx)}))
        tx += 16_000 if 3 <= k < 7 else 0
    node = _node(0.5, 2.0, 2.5, 2.9)
    (late, _) = samples_of([node], sampler, {0: "ll0s0"})
    (down, _) = samples_of([node], sampler, {0: "ll0s0"}, push_starts={0.5: 0.2})
    assert (late.kernel_bytes, down.kernel_bytes) == (2 * 16_000, KERNEL)


def test_a_bulk_message_behind_latency_is_call_bound_and_measures_the_call():
    # 10 objects of 80,000 B on the wire at 8 Mbit/s (0.08 s each), 50 ms one way, 40 ms
    # calls: call + RTT = 0.14 s >= 1.5 × 0.08, so each object costs (0.14 + 0.08) / 2
    nbytes = 10 * 50 * 1448  # 75,700 B a object in frames, + 4,300 B framing
    sample = WireSample("down", nbytes, 10, 800_000, 10 * 0.11, 8.0, 50.0)
    assert sample.framing() == pytest.approx(4300)
    assert sample.call_s(4300) == pytest.approx(0.04)
    # without latency, 0.085 s an object (6 % over its bytes) is a stall, not a 90 ms call
    assert WireSample("down", nbytes, 10, 800_000, 10 * 0.085, 8.0, 0.0).call_s(4300) is None
