"""The link lab's network: its names, and the namespaces and shaped veth pairs it builds.

``<tag>`` is short and unique to a lab instance (the owner's PID in base 36, then a
per-process count), so two labs can run side by side; interface names stay within Linux's
15 characters. Node ``i``'s veth pair is ``ll<tag>s<i>`` (10.213.<i>.1/30, in the
SuperLink's namespace; its egress is the node's downlink) and ``ll<tag>n<i>``
(10.213.<i>.2/30, in ``ll-<tag>-n<i>``; its egress is the node's uplink).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from tools.deploy.linklab.netns import MTU_FRAME, apply_shaping, netns_list, run
from tools.deploy.linklab.record import LabRecord

SUBNET = "10.213"  # node i: 10.213.i.1/30 (SuperLink side), 10.213.i.2/30 (node side)
Rates = tuple[float | None, float | None]  # (down, up) Mbit/s; None = unshaped

_counter = itertools.count()  # this process's labs, for unique tags


@dataclass(frozen=True)
class LabNames:
    """The names of one lab's namespaces and interfaces."""

    tag: str

    @property
    def superlink_ns(self) -> str:
        return f"ll-{self.tag}-sl"

    def node_ns(self, i: int) -> str:
        return f"ll-{self.tag}-n{i}"

    def superlink_if(self, i: int) -> str:
        return f"ll{self.tag}s{i}"

    def node_if(self, i: int) -> str:
        return f"ll{self.tag}n{i}"

    def netns_exec(self, node: int | None) -> list[str]:
        """``ip netns exec <ns>``: prefix of a command to run in node ``node``'s namespace
        (None: the SuperLink's)."""
        return ["ip", "netns", "exec", self.superlink_ns if node is None else self.node_ns(node)]

    def superlink_address(self, i: int) -> str:
        """The SuperLink's address on node ``i``'s link."""
        return f"{SUBNET}.{i}.1"


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def choose_tag() -> str:
    """A tag no existing namespace uses: this PID in 5 base-36 digits (Linux PIDs < 36**5),
    then this process's count, so no two live processes can make the same one."""
    taken = netns_list()
    while True:
        tag = f"{_b36(os.getpid()):0>5}{_b36(next(_counter))}"
        if not any(ns.startswith(f"ll-{tag}-") for ns in taken):
            return tag


def build_network(names: LabNames, links: Sequence[Rates], record: LabRecord) -> None:
    """The SuperLink's namespace and, per node, its namespace and shaped veth pair; each
    recorded in ``record`` before it is made.

    Raises:
        LinkLabError: an ``ip``/``tc`` command failed.
    """
    record.add_namespace(names.superlink_ns)
    for i, (down, up) in enumerate(links):
        ns, sif, nif = names.node_ns(i), names.superlink_if(i), names.node_if(i)
        record.add_namespace(ns)
        record.add_interfaces((names.superlink_ns, sif), (ns, nif))
        # created directly inside the two namespaces: never visible in the host's
        run(["ip", "link", "add", sif, "netns", names.superlink_ns, "type", "veth",
             "peer", "name", nif, "netns", ns])
        run(["ip", "-n", names.superlink_ns, "addr", "add", f"{SUBNET}.{i}.1/30", "dev", sif])
        run(["ip", "-n", ns, "addr", "add", f"{SUBNET}.{i}.2/30", "dev", nif])
        # One segment per packet, as on a real link: with the veth's default 64 KiB
        # GSO packets, htb lets a transfer out in lumps, and the byte counters (and the
        # start of a transfer, which a whole lump leaves at once) are off by a lump.
        for netns, dev in ((names.superlink_ns, sif), (ns, nif)):
            run(["ip", "-n", netns, "link", "set", dev, "gso_max_segs", "1",
                 "gso_max_size", str(MTU_FRAME)])
        run(["ip", "-n", names.superlink_ns, "link", "set", sif, "up"])
        run(["ip", "-n", ns, "link", "set", nif, "up"])
        apply_shaping(names.superlink_ns, sif, down)
        apply_shaping(ns, nif, up)


def shape_link(names: LabNames, i: int, down: float | None, up: float | None) -> None:
    """Node ``i``'s rates in the kernel now (None: unshaped)."""
    apply_shaping(names.superlink_ns, names.superlink_if(i), down)
    apply_shaping(names.node_ns(i), names.node_if(i), up)


def lab_manifest(names: LabNames, links: Sequence[Rates],
                 history: dict[int, list[list]] | None = None) -> dict:
    """What the ServerApp reads (``FEDVIT_LINKLAB``): each node's interfaces and rates, and
    its links over time (``history``: ``[wall-clock s, down, up, latency ms]`` from each
    change on, rates None where unshaped)."""
    history = history or {}
    return {"nodes": {str(i): {"superlink-if": names.superlink_if(i),
                               "node-if": names.node_if(i), "down-mbps": down, "up-mbps": up,
                               "history": history.get(i, [])}
                      for i, (down, up) in enumerate(links)}}


def veth_counters(names: LabNames, count: int) -> dict[int, dict[str, int]]:
    """Byte counters of the SuperLink-side veths of nodes ``0..count-1``: tx = downlink,
    rx = uplink."""
    out = run(["ip", "-n", names.superlink_ns, "-s", "-j", "link", "show"]).stdout
    stats = {link["ifname"]: link["stats64"] for link in json.loads(out)}
    return {i: {"tx": int(stats[names.superlink_if(i)]["tx"]["bytes"]),
                "rx": int(stats[names.superlink_if(i)]["rx"]["bytes"])}
            for i in range(count)}
