"""Replaying a recorded run onto other links and devices: its rounds back to back on a clock.

A replay reads only the run folder (``tools.report.load``): each round's ok replies with
their measured work, bytes and objects (``nodes.json``), the server's rows and the link
model's costs (per-call handling, per-object framing) the run recorded (``phases.json``),
the deployment's fixed costs per message (``config.json``) and the round's central
accuracy (``rounds.json``). Nothing is retrained; no Flower runtime, no model.

Each round is projected by the one projection of the timeline
(``server_app.timeline.project``): per phase the critical path, the node whose download +
work + upload takes longest, plus the server's rows; once as a simulation would run and
once as a deployment (with its fixed costs per message). On its own links (``own``) this
gives back every round's recorded ``projected-s`` and ``deployment-s`` exactly.

**The clock.** Time zero is the start of the run's first round; each round starts where
the previous one ended (the simulation and the deployment view each on its own clock).
Within a round the train phase's messages are sent after the server's ``configure`` and
``send`` rows; each node's reply when its download and its work are done; the evaluate
phase (if any) starts after the train phase's critical path and ``aggregation``;
``central-eval`` closes the round. A message sent at t waits the latency in force at t
and integrates its bytes over its node's rate curve from then (``fedvit.wire.links.LinkCurve``),
so a link that changes during a round (a trace) prices each message at the time it is
sent. The per-call handling and per-object framing stay the run's own (a property of the
machines that ran it, not of the link). A device factor divides a node's compute,
``deserialise`` and ``serialise`` seconds (``tools.replay.specs``).
"""

from __future__ import annotations

from dataclasses import dataclass

from server_app.timeline import FixedCosts, project
from tools.replay.specs import DeviceSpec, LinkSpec
from tools.report.linkmodel import RecordedRound, fixed_costs, recorded_rounds
from tools.report.load import ReportError, Run


@dataclass(frozen=True)
class RoundReplay:
    """One round of a replay, seconds on the replay's clocks.

    ``simulation_s``/``deployment_s``: the round as a simulation and as a deployment;
    ``cumulative_*``: when it ends (time zero = the first round's start); ``accuracy``:
    its central accuracy (``rounds.json`` ``central-accuracy``, 0..1; None if missing).
    """

    round: int
    simulation_s: float
    deployment_s: float
    cumulative_simulation_s: float
    cumulative_deployment_s: float
    accuracy: float | None


@dataclass(frozen=True)
class RunReplay:
    """A run replayed onto ``links`` (and ``devices``): its rounds in order."""

    run: Run
    links: LinkSpec
    devices: DeviceSpec | None
    rounds: list[RoundReplay]

    def time_to(self, target: float, deployment: bool = True) -> float | None:
        """Seconds until the first round whose accuracy reaches ``target`` ends (None:
        not reached in its rounds)."""
        r = self.round_reaching(target)
        if r is None:
            return None
        return r.cumulative_deployment_s if deployment else r.cumulative_simulation_s

    def round_reaching(self, target: float) -> RoundReplay | None:
        """The first round with accuracy >= ``target`` (None: none)."""
        return next((r for r in self.rounds
                     if r.accuracy is not None and r.accuracy >= target), None)

    @property
    def best_accuracy(self) -> float | None:
        """The highest accuracy of any round (None: no round has one)."""
        return max((r.accuracy for r in self.rounds if r.accuracy is not None), default=None)


@dataclass(frozen=True)
class Recorded:
    """What a replay reads of a run, read once (``recorded``): its rounds' projection
    inputs, its deployment's fixed costs and each round's central accuracy."""

    run: Run
    rounds: tuple[RecordedRound, ...]
    fixed: FixedCosts
    accuracy: dict[int, float | None]

    def replay(self, links: LinkSpec, devices: DeviceSpec | None = None) -> RunReplay:
        """The run's rounds back to back on ``links`` with ``devices`` (``replay_run``).

        Raises:
            TraceError: a trace does not cover one of the run's partitions.
        """
        if links.traces is not None:
            for part in sorted({n.partition_id for r in self.rounds for n in r.nodes}):
                links.traces.curve(part)
        link_of = links.link_of(self.run.config)
        speed_of = (lambda n: devices.speed(n.partition_id)) if devices else None
        clock = {"simulation": 0.0, "deployment": 0.0}
        out = []
        for rec in self.rounds:
            seconds = {}
            for view, fixed in (("simulation", None), ("deployment", self.fixed)):
                table, _ = project(list(rec.nodes), rec.server, link_of, fixed, rec.costs,
                                   clock[view], speed_of)
                seconds[view] = sum(table.values())
                clock[view] += seconds[view]
            out.append(RoundReplay(rec.round, seconds["simulation"], seconds["deployment"],
                                   clock["simulation"], clock["deployment"],
                                   self.accuracy.get(rec.round)))
        return RunReplay(self.run, links, devices, out)


def recorded(run: Run) -> Recorded:
    """Read what a replay needs from ``run``.

    Raises:
        ReportError: the run lacks what a replay needs (``recorded_rounds``: a phase
            table, links, per-reply times).
    """
    rounds = recorded_rounds(run)
    if rounds is None:
        raise ReportError(f"{run.path} cannot be replayed: it lacks a phase table (no steady "
                          "round), links or per-reply times")
    return Recorded(run, rounds, fixed_costs(run),
                    {r["round"]: r.get("central-accuracy") for r in run.rounds})


def replay_run(run: Run, links: LinkSpec, devices: DeviceSpec | None = None) -> RunReplay:
    """Replay ``run`` onto ``links`` with ``devices`` (the module docstring).

    Args:
        run: a loaded run folder (``tools.report.load.load_run``).
        links: where to put its nodes (``tools.replay.specs.parse_links``).
        devices: speed factors by partition (None: every node as measured).

    Returns:
        The replay, one ``RoundReplay`` per recorded round.

    Raises:
        ReportError: as ``recorded``.
        TraceError: a trace does not cover one of the run's partitions.
    """
    return recorded(run).replay(links, devices)
