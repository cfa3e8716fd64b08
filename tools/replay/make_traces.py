"""Write the repository's synthetic link traces (``traces/*.csv``), byte for byte the same
on every run: ``python -m tools.replay.make_traces [--out traces]``.

Every trace is **synthetic**: no public measurement data set is reachable from this
machine, so none is cited. ``HOW`` says exactly how each was made; each file's ``#``
header repeats it. After a trace's last row its last values hold for ever
(``tools.replay.traces``).
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tools.replay.traces import COLUMNS, EVERY

SEED = 18
MOBILE_STEP_S, MOBILE_STEPS = 2.0, 300
MOBILE_MEAN_MBPS = (8.0, 2.0)  # down, up
MOBILE_CLIP_MBPS = ((0.5, 40.0), (0.1, 10.0))
AR, NOISE = 0.8, 0.35  # of log(rate)

Row = tuple[str, float, float, float, float]


def steady() -> list[Row]:
    """One fixed broadband link for every node."""
    return [(EVERY, 0.0, 50.0, 10.0, 15.0)]


def mobile() -> list[Row]:
    """A fluctuating mobile link for every node (module docstring)."""
    rng = np.random.default_rng(SEED)
    means = [math.log(m) for m in MOBILE_MEAN_MBPS]
    state = list(means)
    rows = []
    for step in range(MOBILE_STEPS):
        rates = [float(np.clip(math.exp(x), *clip))
                 for x, clip in zip(state, MOBILE_CLIP_MBPS, strict=True)]
        latency = 40.0 + 60.0 * float(rng.uniform())
        rows.append((EVERY, step * MOBILE_STEP_S, *rates, latency))
        state = [m + AR * (x - m) + NOISE * float(rng.standard_normal())
                 for x, m in zip(state, means, strict=True)]
    return rows


def straggler() -> list[Row]:
    """Fast links for all but partition 1, whose link is slow and gets slower at 60 s."""
    return [(EVERY, 0.0, 100.0, 20.0, 10.0), ("1", 0.0, 4.0, 1.0, 120.0),
            ("1", 60.0, 1.0, 0.25, 250.0)]


TRACES = {"steady-broadband.csv": steady, "mobile-fluctuating.csv": mobile,
          "straggler.csv": straggler}
HOW = {
    "steady-broadband.csv": "every node on one fixed link, 50 Mbit/s down, 10 Mbit/s up, "
    "15 ms one-way (a fixed-line broadband contract's nominal figures; one row).",
    "mobile-fluctuating.csv": "every node on a link that changes every 2 s for 10 min "
    "(300 rows): the log of each rate an AR(1) walk x' = m + 0.8 (x - m) + 0.35 e (e "
    f"standard normal, numpy default_rng({SEED})) around log 8 Mbit/s down and log 2 Mbit/s "
    "up, clipped to 0.5..40 and 0.1..10 Mbit/s; latency 40 ms plus 60 ms times a uniform "
    "draw of the same generator (drawn before the step's two normals).",
    "straggler.csv": "every node on 100 Mbit/s down, 20 up, 10 ms, except partition 1: "
    "4 Mbit/s down, 1 up, 120 ms, dropping to 1 Mbit/s down, 0.25 up, 250 ms at 60 s.",
}


def text(name: str, rows: Sequence[Row]) -> str:
    """A trace file: the provenance header, the columns, the rows."""
    how = (f"{name}: synthetic, written by `python -m tools.replay.make_traces`: {HOW[name]} "
           "After a partition's last row its last values hold for ever.")
    head = [f"# {line}" for line in textwrap.wrap(how, 86)]
    body = [f"{p},{t:g},{d:.3f},{u:.3f},{lat:.1f}" for p, t, d, u, lat in rows]
    return "\n".join([*head, ",".join(COLUMNS), *body]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write every trace of ``TRACES`` into ``--out`` (default ``traces``)."""
    parser = argparse.ArgumentParser(description="Write the synthetic link traces.")
    parser.add_argument("--out", type=Path, default=Path("traces"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in TRACES.items():
        (args.out / name).write_text(text(name, make()))
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
