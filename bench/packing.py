"""Packed against unpacked exchange on real links, with and without latency, in the link lab.

For fedavg and fedlora (the default small model, one local epoch), packed
(``pack-tensors`` = true, ``fedvit.wire.packing``) and unpacked, ``--rounds`` rounds, 2
SuperNodes, each a fresh lab (``tools.deploy.linklab``; ``bench/replay.py``'s ``run_lab``)
with both nodes at ``--rate`` Mbit/s both ways: once without latency, once with
``--latency`` ms one way (the lab's delay relay in each node's namespace).

For each it prints, per node and round (the mean over the steady rounds, all but the
first), the download plus the upload:

* **measured**: how long the kernel saw the node's link busy with each message (veth
  counters sampled every 10 ms, ``bench/replay.py``'s ``LabRun.message_transfers``);
* **projected**: the link model's price of each message (``fedvit.wire.links``: its objects,
  one call each, with the run's own calibrated costs) less the one-way latency, as
  measured spans count;
* **limit**: what the physics asks: its bytes (the books' message bytes in TCP/IP frames)
  ÷ the rate + 2 round trips;

and the mean objects per message down and up.

The last line is exactly
``packing: fedavg packed/unpacked=<r> fedlora packed/unpacked=<r> packed/limit=<r>``:
packed ÷ unpacked measured transfer per round at ``--latency``, and packed measured ÷ limit
pooled over both latency settings, the worse strategy's. Targets: packed/limit <= 1.3,
fedavg packed/unpacked <= 0.3.

    sudo env PYTHONPATH=$PWD .venv/bin/python bench/packing.py [--rounds 2] [--rate 8]
        [--latency 50] [--run-config ...]

A small packed message stays above the limit: a reply of 6 objects takes Flower 1.41 one
PushMessages call and then 3 waves of object pushes, two in flight (the chunk first, the
small records after it), i.e. 4 sequential calls, each a round trip and its handling, where
the limit allows 2 round trips; with a 0.06 MB fedlora message at 8 Mbit/s (57 ms) those
calls, not the bytes, set its time. A packed fedavg message (1.1 s of bytes) sits at the
limit.

Needs root, ``ip netns`` and ``tc`` (as the link lab does). About 7 minutes here, plus the
backbone's pretraining on a first run (``weights-path`` = ``public-pretrain``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from flwr.common.config import parse_config_args
from replay import run_lab  # bench/replay.py, this script's sibling

from fedvit.wire.links import FRAME_FACTOR

STRATEGIES = ("fedavg", "fedlora")
LAYOUTS = {"unpacked": False, "packed": True}


def per_round(rows: list[dict], rate: float) -> dict[str, float]:
    """A node's transfer per steady round (down + up, mean over nodes and rounds): measured,
    projected and limit, seconds; and the mean objects per message down and up.

    Args:
        rows: ``LabRun.message_transfers`` of one run (its first round is left out).
        rate: the links' rate, Mbit/s.
    """
    steady = [r for r in rows if r["round"] > min(r["round"] for r in rows)]
    node_rounds = len({(r["round"], r["partition"]) for r in steady}) or 1
    out = {"measured": sum(r["busy-s"] for r in steady) / node_rounds,
           "projected": sum(r["priced-s"] for r in steady) / node_rounds,
           "limit": sum(limit_s(r["bytes"], rate, r["latency-ms"]) for r in steady)
           / node_rounds}
    for d in ("down", "up"):
        objects = [r["objects"] for r in steady if r["direction"] == d]
        out[f"{d}-objects"] = sum(objects) / len(objects) if objects else float("nan")
    return out


def limit_s(nbytes: int, rate: float, latency_ms: float) -> float:
    """A message's physical limit: its bytes in TCP/IP frames ÷ the rate + 2 round trips.

    Args:
        nbytes: its serialised bytes (the books').
        rate: Mbit/s.
        latency_ms: one-way latency, ms.
    """
    return nbytes * FRAME_FACTOR * 8 / (rate * 1e6) + 2 * 2 * latency_ms / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=8.0, help="Mbit/s, both nodes, both ways")
    parser.add_argument("--latency", type=float, default=50.0, help="one-way ms")
    parser.add_argument("--run-config", default="", help="overrides of the run config")
    args = parser.parse_args()
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    results: dict[tuple[str, str, float], dict[str, float]] = {}
    print(f"{'strategy':<9}{'layout':<10}{'latency ms':>11}{'objects down/up':>17}"
          f"{'measured s':>12}{'projected s':>13}{'limit s':>9}{'meas/limit':>12}"
          f"{'meas/proj':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            for layout, pack in LAYOUTS.items():
                for latency in (0.0, args.latency):
                    cfg = {"local-epochs": 1, **overrides, "strategy": strategy,
                           "pack-tensors": pack, "num-server-rounds": args.rounds}
                    work = Path(tmp) / f"{strategy}-{layout}-{latency:g}"
                    lab = run_lab([(args.rate, args.rate)] * 2, latency or None, cfg, work)
                    spec = f"{args.rate:g}/{args.rate:g}/{latency:g}"
                    r = per_round(lab.message_transfers(spec), args.rate)
                    results[(strategy, layout, latency)] = r
                    objects = f"{r['down-objects']:.0f}/{r['up-objects']:.0f}"
                    print(f"{strategy:<9}{layout:<10}{latency:>11g}{objects:>17}"
                          f"{r['measured']:>12.3f}{r['projected']:>13.3f}{r['limit']:>9.3f}"
                          f"{r['measured'] / r['limit']:>12.3f}"
                          f"{r['measured'] / r['projected']:>11.3f}", flush=True)
    print(f"(per node and steady round, download + upload, at {args.rate:g} Mbit/s; measured: "
          "the kernel's busy span of each message; projected: the link model's price less "
          "the one-way latency; limit: bytes ÷ rate + 2 round trips)")
    ratio = {s: results[(s, "packed", args.latency)]["measured"]
             / results[(s, "unpacked", args.latency)]["measured"] for s in STRATEGIES}
    to_limit = max(sum(results[(s, "packed", lat)]["measured"] for lat in (0.0, args.latency))
                   / sum(results[(s, "packed", lat)]["limit"] for lat in (0.0, args.latency))
                   for s in STRATEGIES)
    print(f"packing: fedavg packed/unpacked={ratio['fedavg']:.3f} "
          f"fedlora packed/unpacked={ratio['fedlora']:.3f} packed/limit={to_limit:.3f}")


if __name__ == "__main__":
    main()
