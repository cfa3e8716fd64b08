"""Which run reaches the target accuracy soonest, by how much, and where the two best swap.

The ranking is by time to target as a deployment (the simulation view shown beside it);
runs that do not reach the target come last. Where the two best swap is found on a
uniform-link sweep: every node of both runs on one link of bandwidth B both ways (1 Mbit/s
to 10 Gbit/s, ``tools.report.linkmodel.SWEEP_MBPS``) with the spec's latency (a trace's
mean latency; ``own``: the two runs' mean recorded latency), the two runs' times to target
compared at each B and each sign change refined by bisection on log B
(``tools.report.linkmodel.crossings_of``). The time to target is the end of a fixed
round (accuracy does not depend on the links), so the curves are continuous in B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedvit.wire.links import Link
from tools.replay.engine import Recorded, RunReplay
from tools.replay.specs import UNIFORM, DeviceSpec, LinkSpec
from tools.report.linkmodel import SWEEP_MBPS, crossings_of, fmt_rate


@dataclass(frozen=True)
class Ranked:
    """A run's place: its replay and its time to target (seconds, None: not reached)."""

    replay: RunReplay
    deployment_s: float | None
    simulation_s: float | None
    round: int | None  # the first round reaching the target

    @property
    def label(self) -> str:
        """The run's label (``tools.report.load.run_labels``)."""
        return self.replay.run.label

    def reached_text(self) -> str:
        """Seconds to target as a deployment, or "not reached in N rounds"."""
        if self.deployment_s is None:
            return f"not reached in {len(self.replay.rounds)} rounds"
        return f"{self.deployment_s:.1f} s"


def common_target(replays: Sequence[RunReplay]) -> float | None:
    """The highest accuracy every run reaches (None: a run has no accuracy)."""
    best = [r.best_accuracy for r in replays]
    return None if any(b is None for b in best) else min(best)


def rank(replays: Sequence[RunReplay], target: float) -> list[Ranked]:
    """The runs by time to ``target`` as a deployment (then as a simulation); runs not
    reaching it last, in their given order."""
    ranked = []
    for r in replays:
        hit = r.round_reaching(target)
        ranked.append(Ranked(r, r.time_to(target), r.time_to(target, deployment=False),
                             hit.round if hit else None))
    return sorted(ranked, key=lambda x: (x.deployment_s is None, x.deployment_s or 0.0,
                                         x.simulation_s or 0.0))


def winner_text(ranked: Sequence[Ranked], target: float) -> str:
    """Which run reaches ``target`` soonest and by how much (seconds and ratio)."""
    first = ranked[0]
    if first.deployment_s is None:
        return f"No run reaches accuracy {target:.4f} in its rounds."
    head = (f"{first.label} reaches accuracy {target:.4f} soonest: {first.deployment_s:.1f} s "
            f"as a deployment (round {first.round}; {first.simulation_s:.1f} s as a "
            "simulation)")
    if len(ranked) == 1:
        return head + "."
    second = ranked[1]
    if second.deployment_s is None:
        return head + f"; {second.label} does not reach it in {len(second.replay.rounds)} rounds."
    gap, ratio = second.deployment_s - first.deployment_s, second.deployment_s / first.deployment_s
    sim = ""
    if first.simulation_s and second.simulation_s is not None:
        faster = first if first.simulation_s <= second.simulation_s else second
        sim = (f"; as a simulation {first.label} takes {first.simulation_s:.1f} s and "
               f"{second.label} {second.simulation_s:.1f} s ({faster.label} sooner)")
    return head + (f", {gap:.1f} s sooner than {second.label} ({second.deployment_s:.1f} s, "
                   f"{ratio:.2f}× as long){sim}.")


@dataclass(frozen=True)
class Swap:
    """Where the two best runs' times to target cross on a uniform-link sweep."""

    labels: tuple[str, str]
    latency_ms: float
    mbps: list[float]  # the crossings, ascending (empty: none in the sweep)
    sooner_low: str  # the run sooner at the sweep's lowest bandwidth
    sooner_high: str  # ... and at its highest

    def text(self) -> str:
        """One sentence: the bandwidth(s) of the swap, or that they do not swap."""
        a, b = self.labels
        lo, hi = (fmt_rate(x).replace(".000", "") for x in SWEEP_MBPS)
        on = (f"one uniform link for every node, both ways, {self.latency_ms:g} ms latency "
              "(deployment view)")
        if not self.mbps:
            return (f"On {on}, {a} and {b} do not swap in {lo}–{hi}: {self.sooner_low} "
                    "reaches the target sooner throughout.")
        at = " and ".join(f"**{fmt_rate(x)}**" for x in self.mbps)
        return (f"On {on}, {a} and {b} swap at {at}: {self.sooner_low} reaches the target "
                f"sooner at {lo}, {self.sooner_high} at {hi}.")


def swap(first: Recorded, second: Recorded, target: float, latency_ms: float,
         devices: DeviceSpec | None) -> Swap | None:
    """Where ``first`` and ``second`` swap places on the uniform-link sweep (module
    docstring; the deployment view). None if either does not reach ``target`` in it."""

    def time_to(rec: Recorded, mbps: float) -> float | None:
        spec = LinkSpec(UNIFORM, f"{mbps:g}/{mbps:g}/{latency_ms:g}",
                        Link(mbps, mbps, latency_ms))
        return rec.replay(spec, devices).time_to(target)

    if time_to(first, SWEEP_MBPS[0]) is None or time_to(second, SWEEP_MBPS[0]) is None:
        return None
    xs = crossings_of(lambda b: time_to(first, b), lambda b: time_to(second, b))
    names = (first.run.label, second.run.label)

    def sooner(mbps: float) -> str:
        return names[0] if time_to(first, mbps) <= time_to(second, mbps) else names[1]

    return Swap(names, latency_ms, xs, sooner(SWEEP_MBPS[0]), sooner(SWEEP_MBPS[1]))


def sweep_latency_ms(links: LinkSpec, runs: Sequence[Recorded]) -> float:
    """The sweep's latency: the spec's (``LinkSpec.latency_ms``); for ``own``, the runs'
    mean recorded latency (``summary.json`` links)."""
    recorded_ms = sum(float(r.run.links["latency-ms"]) for r in runs) / len(runs)
    return links.latency_ms(recorded_ms)


@dataclass(frozen=True)
class Comparison:
    """Runs replayed onto one link spec: the ranking by time to ``target``, the winner's
    sentence and the two best's swap on the uniform-link sweep."""

    replays: list[RunReplay]
    target: float | None  # None: a run without accuracy
    target_given: bool  # --target, else the highest accuracy every run reaches
    ranked: list[Ranked]
    winner: str
    swap: Swap | None


def compare(runs: Sequence[Recorded], links: LinkSpec, devices: DeviceSpec | None = None,
            target: float | None = None) -> Comparison:
    """Replay every run onto ``links`` and rank them (module docstring).

    Args:
        runs: the runs (``tools.replay.engine.recorded``).
        links: the link spec.
        devices: device factors (None: as measured).
        target: the accuracy to reach (0..1); None: the highest every run reaches.

    Raises:
        TraceError: a trace does not cover a run's partition.
    """
    replays = [r.replay(links, devices) for r in runs]
    goal = common_target(replays) if target is None else target
    if goal is None:
        return Comparison(replays, None, False, [], "No run has a central accuracy.", None)
    ranked = rank(replays, goal)
    by_label = {r.run.label: r for r in runs}
    best = [x for x in ranked[:2] if x.deployment_s is not None]
    swapped = (swap(by_label[best[0].label], by_label[best[1].label], goal,
                    sweep_latency_ms(links, runs), devices) if len(best) == 2 else None)
    return Comparison(replays, goal, target is not None, ranked, winner_text(ranked, goal),
                      swapped)
