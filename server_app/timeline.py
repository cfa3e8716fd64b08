"""Where a round's time goes: measured second by second, projected onto links, and the phase
table (``phases.csv/json``), its mean over rounds and its text. Stamps are on the node's clock,
push/pull on the server's: a skew of d s moves d between ``pickup`` and ``return``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from logging import WARNING

from flwr.common.logger import log

from fedvit import keys
from fedvit.keys import COMPUTE_ROWS, KINDS, SERVER_ROWS, TABLE_ROWS
from fedvit.schema import dataclass_row, field_values
from fedvit.wire.links import DEFAULT_COSTS, Link, LinkCurve, WireCosts, message_wait_s
from server_app.grid import GridTimes
from strategies import Books, RoundLog
from strategies.timing import ClientReport

# "compute" and "mod" are split into their rows afterwards.
PRIORITY = ("configure", "send", "aggregation", "central-eval", "compute", "deserialise",
            "serialise", "mod", "task-build", "start-up", "transfer", "return", "pickup")
PHASES = ("train", "evaluate")  # in a round's order


@dataclass(frozen=True)
class RoundTimes:
    """One round's seconds: ``measured`` rows add up to ``wall_s``, ``projected`` and
    ``deployment`` (priced with ``costs``) to ``*_s``."""

    round: int
    wall_s: float
    critical_compute_s: float
    slowest_node: int
    projected_s: float
    deployment_s: float
    measured: dict[str, float]
    projected: dict[str, float]
    deployment: dict[str, float]
    costs: WireCosts = DEFAULT_COSTS

    @property
    def unexplained_share(self) -> float:
        return self.measured["unexplained"] / self.wall_s if self.wall_s > 0 else 0.0

    @classmethod
    def from_row(cls, row: dict) -> RoundTimes:
        plain = field_values(row, ("round", "wall_s", "critical_compute_s", "slowest_node",
                                   "projected_s", "deployment_s"))
        tables = {kind: {r: row[f"{kind}-{r}"] for r in TABLE_ROWS} for kind in KINDS}
        return cls(**plain, **tables, costs=WireCosts.from_dict(row))

    def as_row(self) -> dict:
        """A row of ``phases.csv/json`` (``fedvit.schema.PHASES``; inverse ``from_row``)."""
        tables = {f"{kind}-{r}": v for kind in KINDS for r, v in getattr(self, kind).items()}
        return {**dataclass_row(self, leave_out=(*KINDS, "costs")), **tables,
                **self.costs.as_dict()}


def mean_table(rounds: list[RoundTimes]) -> dict[str, dict[str, float]]:
    """Mean seconds per row over ``rounds``: {kind: {row: s}} for each of ``KINDS``."""
    n = max(len(rounds), 1)
    return {kind: {row: sum(getattr(r, kind)[row] for r in rounds) / n for row in TABLE_ROWS}
            for kind in KINDS}


def format_table(tables: dict[str, dict[str, dict[str, float]]],
                 kinds: tuple[str, ...] = KINDS) -> str:
    """The phase table, seconds and share per row, of runs side by side (``tables``: run
    label to ``mean_table``; ``kinds``: its columns)."""
    lines = [f"{'phase':<14}" + "".join(
        f"{label + ' ' + kind[:4]:>24}" for label in tables for kind in kinds)]
    for row in (*TABLE_ROWS, "total"):
        cells = ""
        for t in tables.values():
            for kind in kinds:
                total = sum(t[kind].values())
                s = total if row == "total" else t[kind][row]
                cells += f"{s:>14.3f} s {100 * s / total if total else 0.0:>5.1f} %"
        lines.append(f"{row:<14}{cells}")
    return "\n".join(lines)


@dataclass(frozen=True)
class FixedCosts:
    """A deployment's per-message costs, seconds: the run config's ``deploy-*-s``."""

    pickup_s: float
    startup_s: float
    return_s: float


@dataclass(frozen=True)
class NodeTimes:
    """One reply's way through its node, seconds, with its bytes and link; ``pushed`` and
    ``pulled`` on the server's wall clock, ``stamps`` on the node's."""

    round: int
    phase: str
    node_id: int
    partition_id: int
    fresh: bool
    pushed: float
    pulled: float
    stamps: dict[str, float]
    compute: dict[str, float]  # COMPUTE_ROWS, summing to compute end - compute start
    books_s: float
    transfer_s: float
    down_bytes: int
    up_bytes: int
    down_objects: int
    up_objects: int
    link: Link

    @classmethod
    def from_report(cls, server_round: int, report: ClientReport, grid: GridTimes,
                    books: Books) -> NodeTimes:
        m = report.metrics
        span = m[keys.COMPUTE_END] - m[keys.COMPUTE_START]
        compute = {p: m.get(keys.time_key(p), 0.0) for p in keys.COMPUTE_PHASES}
        compute["client-other"] = max(0.0, span - sum(compute.values()))
        size = {r.direction: (r.message_bytes, r.objects) for r in books.rows
                if r.round == server_round and r.phase == report.phase
                and r.node_id == report.node_id}
        down, up = size.get("down", (0, 0)), size.get("up", (0, 0))
        pushed, pulled = grid.pushed.get(report.reply_to), grid.pulled.get(report.reply_to)
        if pushed is None or pulled is None:
            log(WARNING, "round %d %s node %d: the grid holds no push or pull time of message "
                "%r; the node's own %s/%s stamps (its clock) stand in", server_round,
                report.phase, report.node_id, report.reply_to, keys.MOD_IN, keys.MOD_OUT)
        return cls(server_round, report.phase, report.node_id, int(m.get(keys.PARTITION_ID, -1)),
                   bool(m.get(keys.FRESH, 0)),
                   m[keys.MOD_IN] if pushed is None else pushed,
                   m[keys.MOD_OUT] if pulled is None else pulled,
                   {k: m[k] for k in keys.STAMPS}, compute, m.get(keys.BOOKS_S, 0.0),
                   m.get(keys.TRANSFER_S, 0.0), down[0], up[0], down[1], up[1],
                   Link.from_metrics(m))

    def intervals(self) -> list[tuple[str, float, float]]:
        """(row, start, end) of each step, in order; ``compute`` and ``mod`` to be split."""
        s = self.stamps
        # Pickup ends at the process's start if it was started for this message.
        woke = max(s[keys.PROCESS_START], self.pushed) if self.fresh else s[keys.MOD_IN]
        return [("pickup", self.pushed, woke), ("start-up", woke, s[keys.MOD_IN]),
                ("mod", s[keys.MOD_IN], s[keys.HANDLER_IN]),
                ("task-build", s[keys.HANDLER_IN], s[keys.TASK_BUILT]),
                ("deserialise", s[keys.TASK_BUILT], s[keys.COMPUTE_START]),
                ("compute", s[keys.COMPUTE_START], s[keys.COMPUTE_END]),
                ("serialise", s[keys.COMPUTE_END], s[keys.HANDLER_OUT]),
                ("mod", s[keys.HANDLER_OUT], s[keys.MOD_OUT]),
                ("return", s[keys.MOD_OUT], self.pulled)]

    def seconds(self) -> dict[str, float]:
        """Each step's seconds (``books`` and ``transfer`` as the mod reported them)."""
        out: dict[str, float] = {}
        for row, a, b in self.intervals():
            if row not in ("mod", "compute"):
                out[row] = out.get(row, 0.0) + max(0.0, b - a)
        out.update(self.compute, books=self.books_s, transfer=self.transfer_s)
        return out

    def path(self, link: Link | LinkCurve, fixed: FixedCosts | None,
             costs: WireCosts = DEFAULT_COSTS, start: float = 0.0, speed: float = 1.0
             ) -> dict[str, float]:
        """This node's projected path through one phase on ``link``, seconds per row.
        ``fixed`` None: the simulation view; else the deployment view (a fresh process's own
        pickup, start-up, return, net of its real link's transfer and back-off past its
        download; other replies ``fixed``). ``start``: the send time on ``link``'s clock.
        ``speed`` divides compute, ``deserialise``, ``serialise`` (0.5: twice as slow)."""
        sec = self.seconds()
        out = {row: sec[row] for row in (*COMPUTE_ROWS, "deserialise", "serialise", "books")}
        for row in (*COMPUTE_ROWS, "deserialise", "serialise"):
            out[row] /= speed
        if fixed is None:
            out["task-build"] = 0.0 if self.fresh else sec["task-build"]
        elif self.fresh:
            # The process asks for its message on a back-off schedule (message_wait_s)
            # before its imports: download and back-off lie inside pickup + start-up.
            own = self.link if self.link.real else Link(float("inf"), float("inf"), 0.0)
            waits = max(0.0, sec["pickup"] + sec["start-up"]
                        - message_wait_s(own.down_s(self.down_bytes, self.down_objects, costs)))
            out["pickup"] = min(sec["pickup"], waits)
            out["start-up"] = waits - out["pickup"]
            out["task-build"] = sec["task-build"]
            out["return"] = max(0.0, sec["return"] - own.up_s(self.up_bytes, self.up_objects,
                                                              costs))
        else:
            out.update({"pickup": fixed.pickup_s, "start-up": fixed.startup_s,
                        "task-build": 0.0, "return": fixed.return_s})
        curve = link if isinstance(link, LinkCurve) else LinkCurve.constant(link)
        down = curve.down_s(start, self.down_bytes, self.down_objects, costs)
        if fixed is not None and self.fresh:  # the new link's back-off past the download
            out["start-up"] += message_wait_s(down) - down
        work = sum(s for row, s in out.items() if row != "return")
        out["transfer"] = down + curve.up_s(start + down + work, self.up_bytes,
                                            self.up_objects, costs)
        return out

    def as_row(self) -> dict:
        """A flat row of ``nodes.csv/json`` (``fedvit.schema.NODES``; inverse ``from_row``)."""
        compute = {keys.time_key(k): v for k, v in self.compute.items()}
        return {**dataclass_row(self, leave_out=("stamps", "compute", "link")), **self.stamps,
                **compute, **self.link.as_metrics()}

    @classmethod
    def from_row(cls, row: dict) -> NodeTimes:
        plain = field_values(row, [f.name for f in fields(cls)
                                   if f.name not in ("stamps", "compute", "link")])
        return cls(**plain, stamps={k: row[k] for k in keys.STAMPS},
                   compute={k: row[keys.time_key(k)] for k in COMPUTE_ROWS},
                   link=Link.from_metrics(row))


def sweep(intervals: Iterable[tuple[str, float, float]], start: float, end: float
          ) -> dict[str, float]:
    """Seconds of [start, end) per row by ``PRIORITY``, ``unexplained`` where no interval
    covers; sums to ``end - start``."""
    spans = [(row, max(a, start), min(b, end)) for row, a, b in intervals]
    spans = [x for x in spans if x[2] > x[1]]
    cuts = sorted({start, end, *(a for _, a, _ in spans), *(b for _, _, b in spans)})
    rank = {row: i for i, row in enumerate(PRIORITY)}
    out: dict[str, float] = {}
    for a, b in zip(cuts, cuts[1:], strict=False):
        covering = [row for row, x, y in spans if x <= a and y >= b]
        row = min(covering, key=rank.__getitem__) if covering else "unexplained"
        out[row] = out.get(row, 0.0) + b - a
    return out


def measured_table(nodes: list[NodeTimes], server: list[tuple[str, float, float]],
                   start: float, end: float) -> dict[str, float]:
    """The measured rows of one round (``TABLE_ROWS``), adding up to ``end - start``."""
    swept = sweep([*server, *(i for n in nodes for i in n.intervals())], start, end)
    table = dict.fromkeys(TABLE_ROWS, 0.0)
    shares = {"compute": {p: sum(n.compute[p] for n in nodes) for p in COMPUTE_ROWS},
              "mod": {"books": sum(n.books_s for n in nodes),
                      "transfer": sum(n.transfer_s for n in nodes)}}
    for row, s in swept.items():
        weights = shares.get(row, {row: 1.0})  # shared in proportion (evenly if all are zero)
        norm = sum(weights.values())
        for p, w in weights.items():
            table[p] += s * w / norm if norm > 0 else s / len(weights)
    return table


def critical_path(paths: Mapping[int, Mapping[str, float]]) -> int:
    """The node whose projected path is longest, first of equals (the one rule of the
    timeline and the report's curves); ``ValueError`` if ``paths`` is empty."""
    if not paths:
        raise ValueError("a phase without replies has no critical path")
    return max(paths, key=lambda node: sum(paths[node].values()))


def project(nodes: list[NodeTimes], server: Mapping[str, float],
            link_of: Callable[[NodeTimes], Link | LinkCurve], fixed: FixedCosts | None,
            costs: WireCosts = DEFAULT_COSTS, start: float = 0.0,
            speed_of: Callable[[NodeTimes], float] | None = None
            ) -> tuple[dict[str, float], dict[str, NodeTimes]]:
    """A round on links: (seconds per ``TABLE_ROWS`` row, the critical reply by phase).
    From ``start``, train messages leave after ``configure`` and ``send``, evaluate messages
    after the train critical path and ``aggregation``; ``server``: seconds per
    ``SERVER_ROWS`` row; ``fixed``: see ``NodeTimes.path``; ``speed_of`` None: speed 1."""
    table = dict.fromkeys(TABLE_ROWS, 0.0)
    table.update({k: v for k, v in server.items() if k in SERVER_ROWS})
    critical: dict[str, NodeTimes] = {}
    sent = start + table["configure"] + table["send"]
    for phase in PHASES:
        replies = {n.node_id: n for n in nodes if n.phase == phase}
        if not replies:
            continue
        paths = {k: n.path(link_of(n), fixed, costs, sent,
                           speed_of(n) if speed_of else 1.0) for k, n in replies.items()}
        node = critical_path(paths)
        for row, s in paths[node].items():
            table[row] += s
        critical[phase] = replies[node]
        sent += sum(paths[node].values()) + (table["aggregation"] if phase == "train" else 0)
    return table, critical


def round_times(server_round: int, log: RoundLog, books: Books, grid: GridTimes,
                central_eval: tuple[float, float], fixed: FixedCosts,
                costs_of: Callable[[list[NodeTimes]], WireCosts] = lambda _: DEFAULT_COSTS
                ) -> tuple[RoundTimes, list[NodeTimes]]:
    """One finished round's times and its ok replies' ``NodeTimes``; ``central_eval``:
    (start, end), server wall clock, its end closing the round."""
    nodes = [NodeTimes.from_report(server_round, c, grid, books) for c in log.clients]
    costs = costs_of(nodes)
    pushes = grid.pushes.get(server_round, [])
    server = [*log.server, ("central-eval", *central_eval), *(("send", a, b) for a, b in pushes)]
    measured = measured_table(nodes, server, log.start, central_eval[1])
    server_s = {"configure": log.configure_s, "send": sum(b - a for a, b in pushes),
                "aggregation": log.aggregate_s,
                "central-eval": central_eval[1] - central_eval[0]}
    projected, critical = project(nodes, server_s, lambda n: n.link, None, costs)
    deployment, _ = project(nodes, server_s, lambda n: n.link, fixed, costs)
    slowest = critical["train"].node_id if "train" in critical else -1
    times = RoundTimes(server_round, central_eval[1] - log.start,
                       sum(measured[r] for r in COMPUTE_ROWS), slowest,
                       sum(projected.values()), sum(deployment.values()),
                       measured, projected, deployment, costs)
    return times, nodes
