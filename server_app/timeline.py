"""Where a round's time goes: measured second by second, and projected onto links.

**Measured.** Every moment of a round, from its first configure call to the end of its
central evaluation, is given to one row. The server contributes its configure, push
(``send``), aggregation and central-evaluation intervals; each reply contributes its
message's way through the node (its ``t-*`` stamps, ``fedvit.keys``) between the server's
push and the server's pull:

``pickup``       push → the process starts (or, in a process that was already running, the
                 mod gets the message): SuperNode polling, the message's transfer, queueing
``start-up``     the process's start → the mod gets the message: interpreter, imports,
                 Flower's runtime (only for the first message a process serves)
``task-build``   model and data loaders built (cached after a process's first message)
``deserialise``  the received tensors decoded and loaded into the model
compute rows     training and evaluation (data, forward, backward, optimizer, eval, other)
``serialise``    the reply's tensors encoded
``books``        the client mod's byte counting
``transfer``     emulated link sleeps (``link-emulate``)
``return``       the mod hands the reply back → the server pulls it: the reply's transfer,
                 SuperNode and Grid polling

Where intervals overlap (several nodes, or a wave of clients waiting behind another), a
moment counts for the first row of ``PRIORITY`` that covers it, so the rows add up to the
round's wall time exactly; ``unexplained`` is what no interval covers. The compute rows
share the moments of compute by the phase seconds the replies report; ``books`` and
``transfer`` share the mod's moments likewise.

**Projected.** Each phase (train, then evaluate if any) lasts as long as its slowest node's
path: download + its measured work + upload, with transfer times from the books' message
bytes and the node's link (``fedvit.wire.links``); plus the server's rows. Two projections:

* ``projected``: the run as a simulation would be on those links (no process start-up,
  pickup or return; a node's first-message task build only where the run measured it);
* ``deployment``: the same plus a deployment's fixed costs per message: pickup, start-up
  (with task build) and return. A reply from a fresh process measured its own (net of its
  link's transfer where the node config says the link is real, ``link-real``); any other
  reply gets the run config's ``deploy-pickup-s``, ``deploy-startup-s`` and
  ``deploy-return-s``. (Flower 1.41 starts the process while its SuperNode still pulls the
  message, and the process waits for the message before its imports: a real link's download
  lies inside pickup + start-up, its upload inside return.)

**On a clock.** ``project`` also places a round on a clock (``start``): the train phase's
messages are sent after the server's ``configure`` and ``send`` rows, each node's reply
when its download and its work are done, the evaluate phase's messages after the train
phase's critical path and ``aggregation``; ``central-eval`` closes the round. A message is
priced when it is sent: on a link that changes over time (``fedvit.wire.links.LinkCurve``, a
replay's trace) it waits the latency in force then and its bytes are integrated over the
rate curve; on a static link (the run's own projection, start 0) this is the static
formula. A per-node device speed divides the node's compute, ``deserialise`` and
``serialise`` rows (``NodeTimes.path``). ``tools.replay`` replays recorded rounds back to
back through this same function; the run's own projection is its case of static links,
speed 1.

Clock skew: client stamps are on the node's clock, push and pull times on the server's.
Rows inside a node (start-up to serialise) are exact whatever the skew; a skew of d seconds
moves d between ``pickup`` and ``return`` (and, beyond the round's edges, into
``unexplained``). On one host there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import WARNING

from flwr.common.logger import log

from fedvit import keys
from fedvit.keys import COMPUTE_ROWS, SERVER_ROWS, TABLE_ROWS
from fedvit.schema import dataclass_row, field_values
from fedvit.wire.links import DEFAULT_COSTS, Link, LinkCurve, WireCosts, message_wait_s
from server_app.grid import GridTimes
from server_app.phase_table import RoundTimes
from strategies import Books, RoundLog
from strategies.timing import ClientReport

# A moment covered by several intervals counts for the first of these ("compute" and "mod"
# are split into their rows afterwards).
PRIORITY = ("configure", "send", "aggregation", "central-eval", "compute", "deserialise",
            "serialise", "mod", "task-build", "start-up", "transfer", "return", "pickup")
PHASES = ("train", "evaluate")  # in a round's order


@dataclass(frozen=True)
class FixedCosts:
    """A deployment's per-message costs, seconds: the run config's ``deploy-*-s``."""

    pickup_s: float
    startup_s: float
    return_s: float


@dataclass(frozen=True)
class NodeTimes:
    """One reply's way through its node, in seconds, with its bytes and link.

    ``pushed`` and ``pulled`` are the server's wall clock; ``stamps`` the node's.
    """

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
        """Join a reply's metrics with the grid's push/pull times and the books' bytes."""
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

    @property
    def _pickup_end(self) -> float:
        """The process's start if it was started for this message, else the mod's entry."""
        s = self.stamps
        return max(s[keys.PROCESS_START], self.pushed) if self.fresh else s[keys.MOD_IN]

    def intervals(self) -> list[tuple[str, float, float]]:
        """(row, start, end) of each step, in order; ``compute`` and ``mod`` to be split."""
        s = self.stamps
        return [("pickup", self.pushed, self._pickup_end),
                ("start-up", self._pickup_end, s[keys.MOD_IN]),
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

    def down_s(self, link: Link, costs: WireCosts = DEFAULT_COSTS) -> float:
        """Seconds the message takes down ``link``."""
        return link.down_s(self.down_bytes, self.down_objects, costs)

    def up_s(self, link: Link, costs: WireCosts = DEFAULT_COSTS) -> float:
        """Seconds the reply takes up ``link``."""
        return link.up_s(self.up_bytes, self.up_objects, costs)

    def path(self, link: Link | LinkCurve, fixed: FixedCosts | None,
             costs: WireCosts = DEFAULT_COSTS, start: float = 0.0, speed: float = 1.0
             ) -> dict[str, float]:
        """This node's projected path through one phase, per row, on ``link``.

        ``fixed`` None: the simulation view (no pickup, start-up, return; a fresh process's
        task build left out too). Otherwise the deployment view: a fresh process's own
        pickup, start-up and return (net of its real link's transfer and of the process's
        back-off past its download, ``fedvit.wire.links.message_wait_s``; the new link's
        back-off is added to ``start-up``), else ``fixed``.

        Args:
            link: the node's link, static or over time (``fedvit.wire.links.LinkCurve``).
            fixed: None, or a deployment's fixed costs per message.
            costs: per-call handling and per-object framing of the link model.
            start: when the message is sent, seconds on ``link``'s clock; the reply is
                sent when the download and the node's work (every row but ``transfer``
                and ``return``) are done.
            speed: the node's device speed factor: its compute rows, ``deserialise`` and
                ``serialise`` take their measured seconds divided by it (0.5: twice as
                slow).

        Returns:
            Seconds per row.
        """
        sec = self.seconds()
        out = {row: sec[row] for row in (*COMPUTE_ROWS, "deserialise", "serialise", "books")}
        if speed != 1.0:
            for row in (*COMPUTE_ROWS, "deserialise", "serialise"):
                out[row] /= speed
        if fixed is None:
            out["task-build"] = 0.0 if self.fresh else sec["task-build"]
        elif self.fresh:
            # Flower 1.41 starts the ClientApp while its SuperNode still pulls the message,
            # and the process waits for it (asking on a back-off schedule,
            # ``message_wait_s``) before the imports: the download and the back-off lie
            # inside pickup + start-up; the upload inside return.
            own = self.link if self.link.real else Link(float("inf"), float("inf"), 0.0)
            waits = max(0.0, sec["pickup"] + sec["start-up"]
                        - message_wait_s(self.down_s(own, costs)))
            out["pickup"] = min(sec["pickup"], waits)
            out["start-up"] = waits - out["pickup"]
            out["task-build"] = sec["task-build"]
            out["return"] = max(0.0, sec["return"] - self.up_s(own, costs))
        else:
            out.update({"pickup": fixed.pickup_s, "start-up": fixed.startup_s,
                        "task-build": 0.0, "return": fixed.return_s})
        curve = link if isinstance(link, LinkCurve) else LinkCurve.constant(link)
        down = curve.down_s(start, self.down_bytes, self.down_objects, costs)
        if fixed is not None and self.fresh:  # the process's back-off past the download
            out["start-up"] += message_wait_s(down) - down
        work = sum(s for row, s in out.items() if row != "return")
        out["transfer"] = down + curve.up_s(start + down + work, self.up_bytes,
                                            self.up_objects, costs)
        return out

    def as_row(self) -> dict:
        """A flat row for ``nodes.csv/json`` (columns: ``fedvit.schema.NODES``; inverse:
        ``from_row``)."""
        row = dataclass_row(self, leave_out=("stamps", "compute", "link"))
        row.update(self.stamps)
        row.update({keys.time_key(k): v for k, v in self.compute.items()})
        row.update(self.link.as_metrics())
        return row

    @classmethod
    def from_row(cls, row: dict) -> NodeTimes:
        """Inverse of ``as_row`` (a checkpoint's or a run folder's rows)."""
        plain = field_values(row, ("round", "phase", "node_id", "partition_id", "fresh",
                                   "pushed", "pulled", "books_s", "transfer_s", "down_bytes",
                                   "up_bytes", "down_objects", "up_objects"))
        return cls(**plain, stamps={k: row[k] for k in keys.STAMPS},
                   compute={k: row[keys.time_key(k)] for k in COMPUTE_ROWS},
                   link=Link.from_metrics(row))


def sweep(intervals: Iterable[tuple[str, float, float]], start: float, end: float
          ) -> dict[str, float]:
    """Seconds of [start, end) per row, each moment given to the first row of ``PRIORITY``
    that covers it; ``unexplained`` for moments none covers. Sums to ``end - start``."""
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


def _split(total: float, weights: dict[str, float]) -> dict[str, float]:
    """``total`` shared in proportion to ``weights`` (evenly if they are all zero)."""
    norm = sum(weights.values())
    if norm <= 0:
        return {k: total / len(weights) for k in weights}
    return {k: total * w / norm for k, w in weights.items()}


def measured_table(nodes: list[NodeTimes], server: list[tuple[str, float, float]],
                   start: float, end: float) -> dict[str, float]:
    """The measured rows of one round (``TABLE_ROWS``), adding up to ``end - start``."""
    swept = sweep([*server, *(i for n in nodes for i in n.intervals())], start, end)
    table = dict.fromkeys(TABLE_ROWS, 0.0)
    for row, s in swept.items():
        if row == "compute":
            weights = {p: sum(n.compute[p] for n in nodes) for p in COMPUTE_ROWS}
            for p, x in _split(s, weights).items():
                table[p] += x
        elif row == "mod":
            weights = {"books": sum(n.books_s for n in nodes),
                       "transfer": sum(n.transfer_s for n in nodes)}
            for p, x in _split(s, weights).items():
                table[p] += x
        else:
            table[row] += s
    return table


def critical_path(paths: Mapping[int, Mapping[str, float]]) -> int:
    """The critical path of one phase: the node whose projected path takes longest.

    The one rule for both the timeline (``project``) and the report's bandwidth curves.

    Args:
        paths: per node id, its path through the phase, seconds per row
            (``NodeTimes.path``: its work plus its transfer on its link).

    Returns:
        The node id whose rows add up to the most seconds (the first of equals, in the
        mapping's order).

    Raises:
        ValueError: ``paths`` is empty (a phase without replies has no critical path).
    """
    if not paths:
        raise ValueError("a phase without replies has no critical path")
    return max(paths, key=lambda node: sum(paths[node].values()))


def project(nodes: list[NodeTimes], server: Mapping[str, float],
            link_of: Callable[[NodeTimes], Link | LinkCurve], fixed: FixedCosts | None,
            costs: WireCosts = DEFAULT_COSTS, start: float = 0.0,
            speed_of: Callable[[NodeTimes], float] | None = None
            ) -> tuple[dict[str, float], dict[str, NodeTimes]]:
    """A round on links: per phase, the critical path (``critical_path``); plus the
    server's rows.

    The round starts at ``start`` on the links' clock: the train phase's messages are sent
    after the server's ``configure`` and ``send`` rows; the evaluate phase's after the
    train phase's critical path and ``aggregation``; ``central-eval`` closes the round
    (its length is the sum of the rows, wherever it starts).

    Args:
        nodes: the round's ok replies.
        server: seconds per ``SERVER_ROWS`` row.
        link_of: the link each node is projected on (static, or over time).
        fixed: None for the simulation view, else a deployment's fixed costs
            (see ``NodeTimes.path``).
        costs: per-call handling and per-object framing.
        start: the round's start, seconds on the links' clock.
        speed_of: each node's device speed factor (None: 1 for every node).

    Returns:
        (seconds per ``TABLE_ROWS`` row, the reply on each phase's critical path, by phase;
        a phase without replies is left out).
    """
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
    """Analyse one finished round.

    Args:
        server_round: the round.
        log: what the strategy saw of it (server intervals, the ok replies' metrics).
        books: the bandwidth books (message bytes per node and direction).
        grid: the Grid wrapper's push and pull times.
        central_eval: (start, end) of its central evaluation, server wall clock; the end
            closes the round.
        fixed: a deployment's fixed costs for replies that did not measure their own.
        costs_of: the link model's per-call handling and per-object framing for the
            round's replies (recorded with the round's times).

    Returns:
        The round's times, and each reply's ``NodeTimes``.
    """
    nodes = [NodeTimes.from_report(server_round, c, grid, books) for c in log.clients]
    costs = costs_of(nodes)
    server = [*log.server, ("central-eval", *central_eval),
              *(("send", a, b) for a, b in grid.pushes.get(server_round, []))]
    measured = measured_table(nodes, server, log.start, central_eval[1])
    server_s = {"configure": log.configure_s, "send": grid.send_s(server_round),
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
