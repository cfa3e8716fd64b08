"""A round's phase table (``phases.csv/json``, filled by ``server_app.timeline``), its mean
over rounds, and the table as text (the log, the report)."""

from __future__ import annotations

from dataclasses import dataclass

from fedvit.keys import KINDS, TABLE_ROWS
from fedvit.schema import dataclass_row, field_values
from fedvit.wire.links import DEFAULT_COSTS, WireCosts


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
        row = dataclass_row(self, leave_out=(*KINDS, "costs"))
        for kind in KINDS:
            row.update({f"{kind}-{r}": v for r, v in getattr(self, kind).items()})
        row.update(self.costs.as_dict())
        return row


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
