"""The report's bandwidth model: a run's mean steady round against link bandwidth.

Every reply of every steady round (``nodes.json``) is put on one link of bandwidth B with
the run's latency and the round is projected as the timeline projects it
(``server_app.timeline.project``): per phase the critical path (``critical_path``: the
node whose own path, its work plus its transfer on that link, takes longest), plus the
server's rows of that round (``phases.json``); the curve is the mean over the steady
rounds. The simulation view leaves out a deployment's fixed costs per message, the
deployment view adds them (the run config's ``deploy-*-s``, or what a fresh process
measured: ``NodeTimes.path``). At the run's own uniform links the model gives back the
run's projected round.

Where the curve reaches a value (half the round in transfer, another run's round) is found
by bisection on a log scale: the critical node may change with the bandwidth, so there is
no closed form in general.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from fedvit.keys import SERVER_ROWS, TABLE_ROWS
from fedvit.wire.links import DEFAULT_COSTS, Link, WireCosts, wire_bytes
from server_app.timeline import FixedCosts, NodeTimes, RoundTimes, project
from tools.report.load import Run, steady_rounds

SWEEP_MBPS = (1.0, 10_000.0)  # 1 Mbit/s .. 10 Gbit/s
SWEEP_POINTS = 60
DEPLOY_KEYS = ("deploy-pickup-s", "deploy-startup-s", "deploy-return-s")  # config.json
BISECTION_STEPS = 200  # on log(B): far below a printed digit
BRACKET_MBPS = (1e-12, 1e15)  # where half_comm_mbps looks for its bracket


@dataclass(frozen=True)
class RecordedRound:
    """One recorded round: its ok replies, the server's seconds per ``SERVER_ROWS`` row, the
    link model's costs its projection used (``phases``), and its number."""

    nodes: tuple[NodeTimes, ...]
    server: dict[str, float]
    costs: WireCosts = DEFAULT_COSTS
    round: int = 0


@dataclass(frozen=True)
class CriticalPath:
    """The mean steady round at one link speed: its critical path and what it moves."""

    table: dict[str, float]  # seconds per TABLE_ROWS row
    down_bytes: float  # the critical replies' downloads as they take the wire, per round
    up_bytes: float  # ... and their uploads
    messages: float  # messages on the critical path per round (2 per phase)

    @property
    def round_s(self) -> float:
        """Seconds of the round."""
        return sum(self.table.values())

    @property
    def fixed_s(self) -> float:
        """Seconds of the round without transfer (work, server rows; fixed costs)."""
        return self.round_s - self.table["transfer"]


@dataclass(frozen=True)
class LinkModel:
    """A run's mean steady round with every node on one link of the given speed."""

    rounds: tuple[RecordedRound, ...]
    latency_ms: float
    fixed: FixedCosts  # the deployment view's per-message costs

    def critical(self, down_mbps: float, up_mbps: float | None = None,
                 deployment: bool = False) -> CriticalPath:
        """The mean steady round on a link of ``down_mbps``/``up_mbps`` Mbit/s.

        Args:
            down_mbps: server -> node, Mbit/s (``math.inf``: no transfer time).
            up_mbps: node -> server, Mbit/s; None: as ``down_mbps``.
            deployment: add a deployment's fixed costs per message.

        Returns:
            Seconds per row and the critical path's bytes and messages, mean of the steady
            rounds.
        """
        link = Link(down_mbps, down_mbps if up_mbps is None else up_mbps, self.latency_ms)
        table = dict.fromkeys(TABLE_ROWS, 0.0)
        down = up = messages = 0.0
        for r in self.rounds:
            rows, critical = project(list(r.nodes), r.server, lambda _: link,
                                     self.fixed if deployment else None, r.costs)
            for row, s in rows.items():
                table[row] += s / len(self.rounds)
            down += sum(wire_bytes(n.down_bytes, n.down_objects, r.costs.pull_object_bytes)
                        for n in critical.values()) / len(self.rounds)
            up += sum(wire_bytes(n.up_bytes, n.up_objects, r.costs.push_object_bytes)
                      for n in critical.values()) / len(self.rounds)
            messages += 2 * len(critical) / len(self.rounds)
        return CriticalPath(table, down, up, messages)

    def round_s(self, down_mbps: float, up_mbps: float | None = None) -> float:
        """Projected round seconds at these link speeds (Mbit/s)."""
        return self.critical(down_mbps, up_mbps).round_s

    def deployment_round_s(self, down_mbps: float, up_mbps: float | None = None) -> float:
        """The same round as a deployment: with its fixed costs per message."""
        return self.critical(down_mbps, up_mbps, deployment=True).round_s

    def sends_nothing(self) -> bool:
        """No reply of a steady round moved a byte."""
        return not any(n.down_bytes or n.up_bytes or n.down_objects or n.up_objects
                       for r in self.rounds for n in r.nodes)

    def half_comm_mbps(self) -> float:
        """Bandwidth below which communication is more than half the projected round.

        Returns:
            B* in Mbit/s with transfer(B*) = round(B*) / 2; ``inf`` when the latencies and
            per-call costs alone make it so at every bandwidth; 0 when nothing is sent.
        """
        if self.sends_nothing():
            return 0.0

        def excess(mbps: float) -> float:
            path = self.critical(mbps)
            return path.table["transfer"] - path.fixed_s

        if excess(math.inf) >= 0:
            return math.inf
        lo = hi = 1.0
        while excess(lo) <= 0 and lo > BRACKET_MBPS[0]:  # transfer grows without bound
            lo /= 1e3  # as B -> 0 where anything is sent
        while excess(hi) > 0 and hi < BRACKET_MBPS[1]:
            hi *= 1e3
        return bisect(excess, lo, hi)


def bisect(f: Callable[[float], float], lo: float, hi: float) -> float:
    """A root of ``f`` between ``lo`` and ``hi`` (> 0, ``f`` of opposite signs at the two),
    halving the interval on a log scale."""
    f_lo = f(lo)
    for _ in range(BISECTION_STEPS):
        mid = math.sqrt(lo * hi)
        if mid in (lo, hi):
            break
        f_mid = f(mid)
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def recorded_rounds(run: Run, rounds: Sequence[int] | None = None
                    ) -> tuple[RecordedRound, ...] | None:
    """The inputs of a run's projection, round by round, as it recorded them.

    Args:
        run: the run.
        rounds: which rounds (None: every round of ``phases.json``, in order).

    Returns:
        One ``RecordedRound`` per round that ``phases.json`` holds; None for a run without
        a phase table (no steady round), links or per-reply times, or the deployment's fixed
        costs in its config.
    """
    if not (run.phase_table and run.links and run.nodes and run.phases
            and all(k in run.config for k in DEPLOY_KEYS)):
        return None
    nodes = [NodeTimes.from_row(row) for row in run.nodes]
    times = {t.round: t for t in map(RoundTimes.from_row, run.phases)}
    return tuple(RecordedRound(tuple(n for n in nodes if n.round == r),
                               {row: times[r].projected[row] for row in SERVER_ROWS},
                               times[r].costs, r)
                 for r in (times if rounds is None else rounds) if r in times)


def fixed_costs(run: Run) -> FixedCosts:
    """The deployment's fixed costs per message of the run's config (``deploy-*-s``)."""
    return FixedCosts(*(float(run.config[k]) for k in DEPLOY_KEYS))


def link_model(run: Run) -> LinkModel | None:
    """The run's bandwidth model.

    Returns:
        None where ``recorded_rounds`` is None or has no steady round.
    """
    rounds = recorded_rounds(run, steady_rounds(run))
    if not rounds:
        return None
    return LinkModel(rounds, float(run.links["latency-ms"]), fixed_costs(run))


def sweep_mbps() -> np.ndarray:
    """The bandwidths of the sweep, Mbit/s, log-spaced over ``SWEEP_MBPS``."""
    return np.logspace(*np.log10(SWEEP_MBPS), SWEEP_POINTS)


def crossovers_mbps(a: LinkModel, b: LinkModel,
                    mbps: Sequence[float] | None = None) -> list[float]:
    """Bandwidths where both runs' projected rounds take equally long, in the sweep
    (``crossings_of`` their ``round_s``)."""
    return crossings_of(a.round_s, b.round_s, mbps)


def crossings_of(f: Callable[[float], float], g: Callable[[float], float],
                 mbps: Sequence[float] | None = None) -> list[float]:
    """Bandwidths where two curves of bandwidth take equal values.

    Args:
        f, g: seconds as a function of Mbit/s.
        mbps: the grid on which sign changes of ``f - g`` are looked for (default
            ``sweep_mbps()``); each is refined by bisection.

    Returns:
        The crossings in Mbit/s, ascending (empty if the curves do not cross on the grid;
        curves that only touch, or coincide, do not cross).
    """
    grid = [float(x) for x in (sweep_mbps() if mbps is None else mbps)]

    def gap(x: float) -> float:
        return f(x) - g(x)

    signed = [(x, d) for x in grid if (d := gap(x)) != 0]
    return [bisect(gap, x0, x1) for (x0, d0), (x1, d1) in pairwise(signed)
            if (d0 > 0) != (d1 > 0)]


def fmt_rate(mbps: float) -> str:
    """A bandwidth, in Mbit/s below 1 Gbit/s, else Gbit/s."""
    if math.isinf(mbps):
        return "∞"
    return f"{mbps / 1e3:.3f} Gbit/s" if mbps >= 1e3 else f"{mbps:.3f} Mbit/s"
