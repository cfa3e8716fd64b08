"""Where a round's time goes: simulated (measured) and projected on the nodes' links.

*Simulated* is what this run measured: the round's wall time; the client compute on the
critical path (the union of the clients' compute intervals, so clients that ran in two
waves on shared CPUs count as two waves); the server's configure, aggregation and central
evaluation; the framework overhead is the rest. The critical-path compute is apportioned to
phases by the phase shares summed over the round's clients.

*Projected* is the round on real links: each phase (train, then evaluate if any) lasts as
long as its slowest sampled node's downlink + compute + uplink, with transfer times from
the measured message bytes and the node's link; plus aggregation and central evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fedvit.links import Link
from strategies import Books, RoundLog

CLIENT_PHASES = ("data", "forward", "backward", "optimizer", "eval")
TABLE_ROWS = (*CLIENT_PHASES, "client-other", "communication", "configure", "aggregation",
              "central-eval", "framework")


@dataclass(frozen=True)
class RoundTimes:
    """One round's time, simulated and projected, in seconds."""

    round: int
    wall_s: float
    critical_compute_s: float
    send_s: float
    wait_s: float
    slowest_node: int
    projected_s: float
    simulated: dict[str, float]
    projected: dict[str, float]

    @classmethod
    def from_row(cls, row: dict) -> RoundTimes:
        """Inverse of ``as_row`` (for a resumed run's earlier rounds)."""
        plain = {k: row[k] for k in ("round", "wall_s", "critical_compute_s", "send_s",
                                     "wait_s", "slowest_node", "projected_s")}
        return cls(**plain,
                   simulated={k[4:]: v for k, v in row.items() if k.startswith("sim-")},
                   projected={k[5:]: v for k, v in row.items() if k.startswith("proj-")})

    def as_row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k not in ("simulated", "projected")}
        row.update({f"sim-{k}": v for k, v in self.simulated.items()})
        row.update({f"proj-{k}": v for k, v in self.projected.items()})
        return row


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total time covered by at least one interval."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _compute_s(metrics: dict[str, float]) -> float:
    return metrics["compute-end"] - metrics["compute-start"]


def _phases(metrics: dict[str, float]) -> dict[str, float]:
    out = {p: metrics.get(f"time-{p}", 0.0) for p in CLIENT_PHASES}
    out["client-other"] = _compute_s(metrics) - sum(out.values())
    return out


def node_times(log: RoundLog, books: Books, server_round: int, phase: str
               ) -> dict[int, tuple[float, float, float]]:
    """Per node of one phase: (down s, compute s, up s) on that node's link."""
    msg = {(r.node_id, r.direction): r.message_bytes for r in books.rows
           if r.round == server_round and r.phase == phase}
    out = {}
    for c in log.clients:
        if c.phase != phase:
            continue
        link = Link.from_metrics(c.metrics)
        out[c.node_id] = (link.down_s(msg.get((c.node_id, "down"), 0)), _compute_s(c.metrics),
                          link.up_s(msg.get((c.node_id, "up"), 0)))
    return out


def round_times(server_round: int, log: RoundLog, books: Books, send_s: float,
                wait_s: float, central_eval_s: float, end: float) -> RoundTimes:
    """Analyse one finished round (``end``: wall clock when its central evaluation ended)."""
    wall = end - log.start
    critical = union_length([(c.metrics["compute-start"], c.metrics["compute-end"])
                             for c in log.clients])
    summed = {p: 0.0 for p in (*CLIENT_PHASES, "client-other")}
    for c in log.clients:
        for p, s in _phases(c.metrics).items():
            summed[p] += s
    total_client = sum(summed.values()) or 1.0
    simulated = {p: critical * s / total_client for p, s in summed.items()}
    simulated.update(communication=0.0, configure=log.configure_s,
                     aggregation=log.aggregate_s, **{"central-eval": central_eval_s})
    simulated["framework"] = wall - sum(simulated.values())

    projected = dict.fromkeys(TABLE_ROWS, 0.0)
    slowest = -1
    for phase in ("train", "evaluate"):
        times = node_times(log, books, server_round, phase)
        if not times:
            continue
        node = max(times, key=lambda n: sum(times[n]))
        down, _, up = times[node]
        report = next(c for c in log.clients if c.phase == phase and c.node_id == node)
        for p, s in _phases(report.metrics).items():
            projected[p] += s
        projected["communication"] += down + up
        slowest = node if phase == "train" else slowest
    projected.update(configure=log.configure_s, aggregation=log.aggregate_s,
                     **{"central-eval": central_eval_s})
    return RoundTimes(server_round, wall, critical, send_s, wait_s, slowest,
                      sum(projected.values()), simulated, projected)


def mean_table(rounds: list[RoundTimes]) -> dict[str, dict[str, float]]:
    """Mean seconds per row over ``rounds``: {"simulated": {...}, "projected": {...}}."""
    n = max(len(rounds), 1)
    return {kind: {row: sum(getattr(r, kind)[row] for r in rounds) / n for row in TABLE_ROWS}
            for kind in ("simulated", "projected")}


def format_table(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    """The analysis' table, seconds and share per phase, for one or more runs side by side.

    ``tables`` maps a run label to ``mean_table(...)``.
    """
    head = f"{'phase':<15}" + "".join(
        f"{label + ' ' + kind[:4]:>24}" for label in tables for kind in ("simulated", "projected")
    )
    lines = [head]
    totals = {(lb, k): sum(t[k].values()) for lb, t in tables.items()
              for k in ("simulated", "projected")}
    for row in (*TABLE_ROWS, "total"):
        cells = []
        for label, t in tables.items():
            for kind in ("simulated", "projected"):
                total = totals[(label, kind)]
                s = total if row == "total" else t[kind][row]
                share = 100 * s / total if total else 0.0
                cells.append(f"{s:>14.3f} s {share:>5.1f} %")
        lines.append(f"{row:<15}" + "".join(cells))
    return "\n".join(lines)
