"""The projection against real links: fedavg and fedlora in the link lab.

For each strategy, three settings, each a fresh link lab (``tools.deploy.linklab``: a SuperLink and
2 SuperNodes as real processes, each SuperNode in its own network namespace behind its own
htb-shaped veth pair): no shaping; a uniform rate (``--rate``, both nodes, both ways); a
heterogeneous pair (node 0 at ``--rate``, node 1 at ``--slow``). Each runs ``--rounds``
rounds of ``vit_tiny_patch16_224`` (random weights, 32 px, 16 px patches, one local epoch),
large enough that fedavg's transfer is most of a shaped round.

For each strategy and setting it prints:

* the measured steady round (mean of all rounds but the first);
* the projected round: the no-shaping run's steady replies projected onto this setting's
  links (``server_app.timeline.project``, deployment view: the same compute and measured
  fixed costs, transfer = the books' message bytes × 8 ÷ rate);
* measured transfer ÷ projected transfer, from per-node transfer timestamps: the kernel's
  byte counters of each shaped veth, sampled every 10 ms (``server_app.calibration``), give
  how long each message kept its link busy (the download between the push and the handler,
  the upload between the handler and the pull); projected = ``fedvit.wire.links``' price of the
  message (its bytes in TCP/IP frames plus Flower's HTTP framing per object) ÷ the rate;
* the shaped round minus the unshaped one, against the projected difference (a check that
  the transfer composes into the round as the projection says; it carries the SuperNodes'
  polling jitter);
* wire ÷ books per direction (``summary.json`` "wire").

The last line is exactly
``links: fedavg transfer measured/projected=<r> fedlora transfer measured/projected=<r>
unexplained=<p>%`` where each ratio pools both shaped settings' steady rounds and
``unexplained`` is the largest unexplained share of any steady round of any run.

    sudo .venv/bin/python bench/links.py [--rate 8] [--slow 4] [--rounds 2] [--run-config ...]

Needs root, ``ip netns`` and ``tc`` (as the link lab does). About 17 minutes here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flwr.common.config import parse_config_args

from fedvit import keys
from fedvit.wire.links import (
    FRAME_FACTOR,
    OBJECT_CALL_S,
    PULL_OBJECT_BYTES,
    PUSH_OBJECT_BYTES,
    Link,
)
from server_app.calibration import CounterSampler
from server_app.timeline import FixedCosts, NodeTimes, RoundTimes, project
from tools.deploy.linklab import UNSHAPED_MBPS, LinkLab

MODEL = {"model-name": "vit_tiny_patch16_224", "weights-path": "", "img-size": 32,
         "patch-size": 16, "local-epochs": 1}


@dataclass
class LabRun:
    """One run in the lab: its steady rounds, replies and measured transfers."""

    links: list[tuple[float | None, float | None]]
    rounds: list[RoundTimes]
    nodes: list[NodeTimes]
    summary: dict
    transfer: dict[tuple[int, int, str], float]  # (round, partition, direction) -> s
    wire: dict[tuple[int, int, str], int]  # (round, partition, direction) -> kernel bytes

    def steady_nodes(self) -> list[NodeTimes]:
        steady = {r.round for r in self.rounds}
        return [n for n in self.nodes if n.round in steady]


def run_lab(links: list, overrides: dict, rounds: int, work: Path) -> LabRun:
    """One fresh lab with ``links``: run, sample the veths' counters, read the outputs."""
    out = work / "out"
    with LinkLab(links, work / "lab") as lab:
        superlink = next(p["pid"] for p in lab.processes() if p["name"] == "superlink")
        with CounterSampler(superlink) as sampler:
            lab.flwr_run({**MODEL, **overrides, "num-server-rounds": rounds,
                          "outputs-dir": str(out), "run-name": "run"}, timeout_s=3600)
        interfaces = {i: lab.superlink_if(i) for i in range(len(links))}
    run = out / "run"
    phases = [RoundTimes.from_row(r) for r in json.loads((run / "phases.json").read_text())]
    nodes = [NodeTimes.from_row(r) for r in json.loads((run / "nodes.json").read_text())]
    # The download lies between the push and the handler, the upload after the handler.
    windows = {"down": lambda n: (n.pushed, n.stamps[keys.MOD_IN]),
               "up": lambda n: (n.stamps[keys.MOD_OUT], n.pulled)}
    transfer, wire = {}, {}
    for n in nodes:
        for d, window in windows.items():
            args = (interfaces[n.partition_id], d, *window(n))
            transfer[(n.round, n.partition_id, d)] = sampler.busy_span(*args)
            wire[(n.round, n.partition_id, d)] = sampler.bytes_in(*args)
    return LabRun(lab.links, phases[1:], nodes, json.loads((run / "summary.json").read_text()),
                  transfer, wire)


def per_object_bytes(runs: list[LabRun]) -> dict[str, float]:
    """Measured framing per object and direction, steady rounds of ``runs``: (the kernel's
    bytes in the transfer's window - the message's bytes in TCP/IP frames) ÷ its objects."""
    extra = {"down": 0.0, "up": 0.0}
    objects = {"down": 0, "up": 0}
    for run in runs:
        for n in run.steady_nodes():
            for d, nbytes, count in (("down", n.down_bytes, n.down_objects),
                                     ("up", n.up_bytes, n.up_objects)):
                extra[d] += run.wire[(n.round, n.partition_id, d)] - nbytes * FRAME_FACTOR
                objects[d] += count
    return {d: extra[d] / objects[d] if objects[d] else float("nan") for d in extra}


def projected_round(base: LabRun, links: list, fixed: FixedCosts) -> float:
    """Mean steady round of ``base``'s replies projected onto ``links`` (by partition)."""
    rates = [Link(*(UNSHAPED_MBPS if v is None else v for v in link or (None, None)), 0.0,
                  real=True) for link in links]
    by_round = {r.round: r for r in base.rounds}
    totals = []
    for rnd, times in by_round.items():
        nodes = [n for n in base.nodes if n.round == rnd]
        server = {k: times.projected[k] for k in ("configure", "send", "aggregation",
                                                    "central-eval")}
        table, _ = project(nodes, server, lambda n: rates[n.partition_id], fixed)
        totals.append(sum(table.values()))
    return statistics.mean(totals)


def transfer_ratio(run: LabRun) -> tuple[float, float]:
    """(measured, projected) transfer seconds over the steady rounds' shaped directions."""
    measured = projected = 0.0
    for n in run.steady_nodes():
        down, up = run.links[n.partition_id]
        link = Link(down or 0.0, up or 0.0, 0.0)
        for d, rate, seconds in (("down", down, n.down_s), ("up", up, n.up_s)):
            if rate is None:
                continue
            measured += run.transfer[(n.round, n.partition_id, d)]
            projected += seconds(link)
    return measured, projected


def per_object_seconds(unshaped: LabRun) -> float:
    """Seconds per object of a transfer on an unshaped link (where bytes cost nothing):
    Flower's per-object calls, two in flight: half of ``fedvit.wire.links.OBJECT_CALL_S``."""
    spans = sum(unshaped.transfer[(n.round, n.partition_id, d)]
                for n in unshaped.steady_nodes() for d in ("down", "up"))
    objects = sum(n.down_objects + n.up_objects for n in unshaped.steady_nodes())
    return spans / objects if objects else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=8.0, help="Mbit/s of a shaped link")
    parser.add_argument("--slow", type=float, default=4.0, help="Mbit/s of the slow node")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--run-config", default="",
                        help="overrides of the model settings, e.g. \"model-name='test_vit' "
                             "img-size=16 patch-size=4\" for a quick look")
    args = parser.parse_args()
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    settings = {"no shaping": [None, None],
                f"uniform {args.rate:g}": [(args.rate, args.rate)] * 2,
                f"pair {args.rate:g}/{args.slow:g}": [(args.rate, args.rate),
                                                       (args.slow, args.slow)]}
    fixed = FixedCosts(0.0, 0.0, 0.0)  # unused: every lab reply measured its own
    pooled: dict[str, list[float]] = {}
    unexplained = 0.0
    print(f"{'strategy':<9}{'setting':<14}{'round s':>9}{'projected s':>13}"
          f"{'transfer meas/proj':>20}{'round delta meas/proj':>23}{'wire/books down':>17}"
          f"{'up':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("fedavg", "fedlora"):
            runs = {name: run_lab(links, {**overrides, "strategy": strategy}, args.rounds,
                                  Path(tmp) / f"{strategy}-{i}")
                    for i, (name, links) in enumerate(settings.items())}
            base = runs["no shaping"]
            base_round = statistics.mean(r.wall_s for r in base.rounds)
            base_proj = projected_round(base, settings["no shaping"], fixed)
            total = [0.0, 0.0]
            for name, run in runs.items():
                unexplained = max([unexplained, *(r.unexplained_share for r in run.rounds)])
                measured_round = statistics.mean(r.wall_s for r in run.rounds)
                proj_round = projected_round(base, settings[name], fixed)
                meas_t, proj_t = transfer_ratio(run)
                wire = run.summary.get("wire", {})
                ratios = [statistics.mean(w[f"{d}-wire-per-books"] for w in wire.values())
                          for d in ("down", "up")] if wire else [float("nan")] * 2
                cells = ["-", "-"]
                if proj_t > 0:
                    total = [total[0] + meas_t, total[1] + proj_t]
                    cells = [f"{meas_t / proj_t:.3f}",
                             f"{(measured_round - base_round) / (proj_round - base_proj):.3f}"]
                print(f"{strategy:<9}{name:<14}{measured_round:>9.2f}{proj_round:>13.2f}"
                      f"{cells[0]:>20}{cells[1]:>23}{ratios[0]:>17.3f}{ratios[1]:>6.3f}")
            pooled[strategy] = total
            framing = per_object_bytes(list(runs.values()))
            print(f"{strategy:<9}per object, measured: framing down {framing['down']:.0f} B, "
                  f"up {framing['up']:.0f} B, handling {1e3 * per_object_seconds(base):.1f} "
                  f"ms (the model's: {PULL_OBJECT_BYTES} B, {PUSH_OBJECT_BYTES} B, "
                  f"{1e3 * OBJECT_CALL_S / 2:.1f} ms)")
    ratio = {k: measured / projected for k, (measured, projected) in pooled.items()}
    print(f"links: fedavg transfer measured/projected={ratio['fedavg']:.3f} "
          f"fedlora transfer measured/projected={ratio['fedlora']:.3f} "
          f"unexplained={100 * unexplained:.1f}%")


if __name__ == "__main__":
    main()
