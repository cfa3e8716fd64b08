"""The replay against real links that change rate and have latency, in the link lab.

For fedavg and fedlora (``vit_tiny_patch16_224``, random weights, 32 px, 16 px patches, one
local epoch: ``bench/links.py``'s model), ``--rounds`` rounds, 2 SuperNodes, each a fresh
lab (``tools.deploy.linklab``):

1. **unshaped**: recorded once, no shaping, no latency;
2. **trace**: the strategy's trace (``trace_text``: both nodes alternate between a fast and
   a slow rate, node 1 half a period later, so changes fall while messages are on the
   wire) played onto the lab's shaping from the ServerApp's first round
   (``LinkLab.flwr_run(trace=...)``);
3. **latency**: a uniform 8 Mbit/s link, both ways, with 50 ms one-way latency (the lab's
   delay relay in each node's namespace).

The unshaped run is then replayed (``tools.replay.engine.replay_run``, deployment view)
onto each setting's spec: for the trace, the trace *as the lab applied it*, its times
counted from the lab run's first round (``LinkLab.write_applied_trace``); for latency,
``8/8/50``. For each strategy and setting it prints the measured time to the last round
(the sum of the rounds' wall times, ``rounds.json`` ``round-s``), the replayed one, and
their ratio (target 0.9–1.1); as a diagnosis, the lab run's own replies replayed onto the
same spec (the model without the two runs' differences in compute and polling), and its
messages' measured transfer (how long the kernel saw the link busy with each, veth
counters sampled every 10 ms) against the link model's price of each on the setting's
links with the run's own costs; the changes that fell inside a message's window; and each
lab run's calibrated per-call handling and framing (``summary.json`` "wire-costs") against
the old constant.

The last line is exactly
``replay: fedavg measured/replayed=<r> fedlora measured/replayed=<r> latency measured/replayed=<r>``
(the first two from the trace setting, the third the worse strategy under latency: the
ratio farther from 1).

    sudo .venv/bin/python bench/replay.py [--rounds 3] [--run-config ...] [--keep DIR]
    .venv/bin/python bench/replay.py --reuse DIR   # the kept runs replayed again, no labs

Needs root, ``ip netns`` and ``tc`` (as the link lab does). About 15 minutes here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flwr.common.config import parse_config_args

from fedvit import keys
from fedvit.wire.links import OBJECT_CALL_S, Link
from server_app.calibration import CounterSampler
from server_app.timeline import NodeTimes, RoundTimes
from tools.deploy.linklab import LinkLab
from tools.replay.engine import replay_run
from tools.replay.specs import parse_links
from tools.report.load import Run, load_run

MODEL = {"model-name": "vit_tiny_patch16_224", "weights-path": "", "img-size": 32,
         "patch-size": 16, "local-epochs": 1}
LATENCY = (8.0, 50.0)  # Mbit/s both ways, ms one-way
# (fast, slow) Mbit/s and the half period, s: a fedavg message (~21 MB) takes 10-30 s, a
# fedlora one (~0.3 MB) 1-5 s, so every message of either meets changes.
TRACE_RATES = {"fedavg": (16.0, 6.0, 9.0), "fedlora": (2.0, 0.5, 2.0)}
TRACE_LENGTH_S = 900.0


def trace_text(strategy: str) -> str:
    """The strategy's trace file: both directions of both nodes alternate between a fast and
    a slow rate every ``half`` seconds, starting fast; node 1's changes fall half-way
    between node 0's; no latency."""
    fast, slow, half = TRACE_RATES[strategy]
    lines = [f"# bench/replay.py, synthetic: {fast:g} and {slow:g} Mbit/s alternating every "
             f"{half:g} s, node 1's changes {half / 2:g} s after node 0's",
             "partition,t-s,down-mbps,up-mbps,latency-ms"]
    for node, offset in ((0, 0.0), (1, half / 2)):
        lines.append(f"{node},0,{fast:g},{fast:g},0")
        k = 1
        while (t := offset + k * half) < TRACE_LENGTH_S:
            rate = slow if k % 2 else fast
            lines.append(f"{node},{t:g},{rate:g},{rate:g},0")
            k += 1
    return "\n".join(lines) + "\n"


@dataclass
class LabRun:
    """One lab run: its folder, the SuperLink-side veths' sampled counters, and for a trace
    run the trace as applied."""

    run: Run
    sampler: CounterSampler | None  # None: a run kept by an earlier --keep (--reuse)
    interfaces: dict[int, str]
    applied: Path | None = None
    changes_in_windows: tuple[int, int] = (0, 0)

    def transfer_ratio(self, spec: str, keep: Path | None = None) -> float:
        """Every message's measured transfer ÷ the model's price of it on ``spec`` with
        this run's own calibrated costs, pooled (``message_transfers``). NaN where no
        message was seen. ``keep``: write each message's figures there (JSON); without a
        sampler, read them there."""
        if self.sampler is None:
            rows = json.loads(keep.read_text()) if keep and keep.exists() else []
        else:
            rows = self.message_transfers(spec)
            if keep is not None:
                keep.write_text(json.dumps(rows, indent=1))
        priced = sum(r["priced-s"] for r in rows)
        return sum(r["busy-s"] for r in rows) / priced if priced else float("nan")

    def message_transfers(self, spec: str) -> list[dict]:
        """Each message's measured transfer and the model's price of it on ``spec`` with
        this run's own calibrated costs: measured (``busy-s``) = how long the kernel saw
        its link busy with it (``CounterSampler.busy_interval``); price (``priced-s``) =
        ``Link``/``LinkCurve`` ``down_s``/``up_s`` at the time its bytes started, less the
        one-way latency (the busy span starts with the first bytes). A message the
        sampler never saw busy is left out.

        Returns:
            One row per message: ``round``, ``partition``, ``direction``, ``objects``,
            ``bytes`` (the books' message bytes), ``start-s`` (from the first round's
            start), ``busy-s``, ``priced-s`` and ``latency-ms``.
        """
        link_of = parse_links(spec).link_of(self.run.config)
        costs = {r["round"]: RoundTimes.from_row(r).costs for r in self.run.phases}
        origin = first_round_start(self.run)
        rows = []
        for n, windows in message_windows(self.run):
            link = link_of(n)
            for d, a, b in windows:
                nbytes, objects = ((n.down_bytes, n.down_objects) if d == "down"
                                   else (n.up_bytes, n.up_objects))
                busy = self.sampler.busy_interval(self.interfaces[n.partition_id], d, a, b)
                if busy is None:
                    continue
                t = busy[0] - origin
                static = link if isinstance(link, Link) else link.at(t)
                price = (getattr(static, f"{d}_s")(nbytes, objects, costs[n.round])
                         if isinstance(link, Link) else
                         getattr(link, f"{d}_s")(t, nbytes, objects, costs[n.round]))
                rows.append({"round": n.round, "partition": n.partition_id, "direction": d,
                             "objects": objects, "bytes": nbytes, "start-s": t,
                             "busy-s": busy[1] - busy[0],
                             "priced-s": price - static.latency_ms / 1e3,
                             "latency-ms": static.latency_ms})
        return rows

    @property
    def measured_s(self) -> float:
        """Time to the last round: the sum of the rounds' wall times."""
        return sum(r["round-s"] for r in self.run.rounds)

    def costs(self) -> dict:
        return self.run.summary[keys.WIRE_COSTS]


def run_lab(links: list, latency_ms: float | None, cfg: dict, work: Path,
            trace: Path | None = None) -> LabRun:
    """One fresh lab: run ``cfg``, playing ``trace`` from the first round if given."""
    from tools.replay.traces import read_trace

    out = work / "out"
    with LinkLab(links, work / "lab", latency_ms=latency_ms) as lab:
        superlink = next(p["pid"] for p in lab.processes() if p["name"] == "superlink")
        interfaces = {i: lab.superlink_if(i) for i in range(len(links))}
        with CounterSampler(superlink, interfaces=tuple(interfaces.values())) as sampler:
            lab.flwr_run({**cfg, "outputs-dir": str(out), "run-name": "run"},
                         timeout_s=3600, trace=read_trace(trace) if trace else None)
        run = load_run(out / "run")
        if trace is None:
            return LabRun(run, sampler, interfaces)
        if lab.player.t0 is None:
            raise RuntimeError("the trace never started: the ServerApp's first round was "
                               f"not seen in {lab.logs}/flwr-run-*.log")
        applied = lab.write_applied_trace(work / "applied.csv", first_round_start(run))
        return LabRun(run, sampler, interfaces, applied,
                      changes_in_windows(run, lab.player.applied))


def kept_lab(work: Path) -> LabRun:
    """A lab run an earlier ``--keep`` left in ``work`` (``run_lab``'s layout)."""
    run = load_run(work / "out" / "run")
    applied = work / "applied.csv"
    if not applied.exists():
        return LabRun(run, None, {})
    changes = json.loads((work / "lab" / "trace-applied.json").read_text())["changes"]
    return LabRun(run, None, {}, applied, changes_in_windows(run, changes))


def first_round_start(run: Run) -> float:
    """Wall-clock start of the run's first round, as a replay counts it: its first message
    was pushed (end of ``send``) after the server's ``configure`` and ``send`` rows."""
    first = RoundTimes.from_row(run.phases[0])
    pushed = min(n.pushed for n in map(NodeTimes.from_row, run.nodes)
                 if n.round == first.round)
    return pushed - first.measured["configure"] - first.measured["send"]


def message_windows(run: Run) -> list[tuple[NodeTimes, list[tuple[str, float, float]]]]:
    """Each reply with its messages' windows, wall clock: ("down", the start of the push
    call, ``t-mod-in``), ("up", ``t-mod-out``, the pull). (A reply's ``pushed`` is the end
    of the push call, which pushes every node's message: one may start before it.)"""
    send = {r["round"]: RoundTimes.from_row(r).projected["send"] for r in run.phases}
    return [(n, [("down", n.pushed - send[n.round], n.stamps[keys.MOD_IN]),
                 ("up", n.stamps[keys.MOD_OUT], n.pulled)])
            for n in map(NodeTimes.from_row, run.nodes)]


def changes_in_windows(run: Run, applied: list[dict]) -> tuple[int, int]:
    """(changes inside a message's window on their node (``message_windows``), changes
    during the run's rounds)."""
    replies = message_windows(run)
    windows = [(n.partition_id, a, b) for n, w in replies for _, a, b in w]
    end = max(n.pulled for n, _ in replies)
    during = [c for c in applied if c["applied-t-s"] > 0 and c["applied-wall"] <= end]
    inside = [c for c in during if any(p == c["partition"] and a <= c["applied-wall"] <= b
                                       for p, a, b in windows)]
    return len(inside), len(during)


def replayed_s(run: Run, spec: str) -> float:
    """The run replayed onto ``spec``: the deployment view's time to its last round."""
    return replay_run(run, parse_links(spec)).rounds[-1].cumulative_deployment_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-config", default="",
                        help="overrides of the model settings, e.g. \"model-name='test_vit' "
                             "img-size=16 patch-size=4\" for a quick look")
    parser.add_argument("--keep", type=Path, help="keep the labs' folders here")
    parser.add_argument("--reuse", type=Path, help="no labs: replay the runs an earlier "
                        "--keep left in this folder (e.g. after a change of the model)")
    args = parser.parse_args()
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    rate, latency = LATENCY
    ratios: dict[tuple[str, str], float] = {}
    print(f"{'strategy':<9}{'setting':<10}{'measured s':>11}{'replayed s':>11}"
          f"{'meas/repl':>10}{'own replies':>12}{'transfer':>9}{'changes':>9}{'call ms':>8}"
          f"{'framing down/up B':>19}  source")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.reuse or args.keep or Path(tmp)
        for strategy in ("fedavg", "fedlora"):
            cfg = {**MODEL, **overrides, "strategy": strategy,
                   "num-server-rounds": args.rounds}
            work = root / strategy
            if args.reuse:
                labs = {name: kept_lab(work / name) for name in ("unshaped", "trace", "latency")}
            else:
                (work / "trace.csv").parent.mkdir(parents=True, exist_ok=True)
                (work / "trace.csv").write_text(trace_text(strategy))
                labs = {"unshaped": run_lab([None, None], None, cfg, work / "unshaped"),
                        "trace": run_lab([None, None], None, cfg, work / "trace",
                                         work / "trace.csv"),
                        "latency": run_lab([(rate, rate)] * 2, latency, cfg,
                                           work / "latency")}
            base = labs["unshaped"]
            runs = {"unshaped": (base, "own"), "trace": (labs["trace"], None),
                    "latency": (labs["latency"], f"{rate:g}/{rate:g}/{latency:g}")}
            for name, (lab_run, spec) in runs.items():
                spec = spec or str(lab_run.applied)
                replayed = replayed_s(base.run, spec)
                ratio = lab_run.measured_s / replayed
                ratios[(strategy, name)] = ratio
                # a trace run's node configs keep the links they started with, so its
                # replies cannot be netted of their real transfer: no own replay there
                own = (f"{lab_run.measured_s / replayed_s(lab_run.run, spec):.3f}"
                       if lab_run.applied is None else "-")
                costs = lab_run.costs()
                inside, during = lab_run.changes_in_windows
                changes = f"{inside}/{during}" if lab_run.applied else "-"
                transfer = lab_run.transfer_ratio(spec, work / f"{name}-transfer.json")
                print(f"{strategy:<9}{name:<10}{lab_run.measured_s:>11.2f}{replayed:>11.2f}"
                      f"{ratio:>10.3f}{own:>12}{transfer:>9.3f}{changes:>9}"
                      f"{1e3 * costs['call-s']:>8.1f}"
                      f"{costs['pull-object-bytes']:>10.0f}/{costs['push-object-bytes']:<8.0f}"
                      f"  {costs['source']}", flush=True)
    print(f"(meas/repl: the lab run's time to its last round ÷ the unshaped run replayed "
          f"onto the setting; own replies: ÷ the lab run itself replayed onto it; transfer: "
          f"its messages' measured transfer ÷ the model's price on the setting's links with "
          f"its own costs; changes: the trace's changes inside a message's window / during "
          f"the rounds; call ms: the lab run's calibrated per-call handling, against the "
          f"old constant {1e3 * OBJECT_CALL_S:g} ms)")
    worse = max(("fedavg", "fedlora"), key=lambda s: abs(ratios[(s, "latency")] - 1))
    print(f"replay: fedavg measured/replayed={ratios[('fedavg', 'trace')]:.3f} "
          f"fedlora measured/replayed={ratios[('fedlora', 'trace')]:.3f} "
          f"latency measured/replayed={ratios[(worse, 'latency')]:.3f}")


if __name__ == "__main__":
    main()
