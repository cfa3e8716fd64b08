"""A link lab: a real Flower deployment on one machine in which every SuperNode sits behind its
own real, shaped network link (Linux network namespaces, veth pairs and ``tc htb``).

Layout of one lab instance (``<tag>`` is short and unique to the instance, e.g. ``004vc0``)::

    netns ll-<tag>-sl      flower-superlink --host 0.0.0.0 --port 8000 (and its superexec,
      |                    which starts the ServerApp; `flwr` runs in here on 127.0.0.1:8000)
      veth ll<tag>s<i>     10.213.<i>.1/30   egress = node i's DOWNLINK (shaped)
      |
      veth ll<tag>n<i>     10.213.<i>.2/30   egress = node i's UPLINK (shaped)
    netns ll-<tag>-n<i>    flower-supernode --superlink 10.213.<i>.1:8000 --port 9100 (its
                           superexec and ClientApps talk to it on 127.0.0.1 in here); with a
                           latency: relay.py on 127.0.0.1:8001 -> 10.213.<i>.1:8000, and
                           the SuperNode's --superlink 127.0.0.1:8001

``lo`` is up in every namespace. The addresses exist only inside the lab's namespaces, so two
labs (a test and a bench) can run side by side; names carry the tag, interface names stay
within Linux's 15 characters.

Shaping (per node and direction; ``None`` = unshaped, the veth's default ``noqueue``)::

    tc qdisc replace dev IF root handle 1: htb default 1
    tc class replace dev IF parent 1: classid 1:1 htb rate R ceil R burst B cburst B quantum 1514
    tc qdisc replace dev IF parent 1:1 handle 10: pfifo limit 1000

``rate = ceil`` (one class: no borrowing, the link is exactly R bit/s, 10^6 bit per Mbit as
tc counts, Ethernet/IP/TCP headers included). ``burst = cburst = max(2 frames, 2 ms at
R)``: every packet is one full frame at most (the veths send one segment per packet,
``gso_max_segs 1``, as a real link does), and a larger burst would let the start of every
transfer run above R. ``quantum 1514`` (one class, so it only silences htb's quantum
warning). The leaf is a 1000-packet FIFO (the veth's own ``txqueuelen``), large enough that
a TCP sender is never starved by drops. The price is queueing delay, as on a bloated access
link, for whatever shares the link with a bulk transfer (heartbeats, polls); ``tc -s qdisc``
shows the backlog and drops.

Latency (``latency_ms``, per node): ``netem`` is not in this kernel, so a node with a
latency gets a delay relay (``relay``), a recorded lab process in its namespace: a TCP
relay that stamps every chunk it reads and forwards it at arrival + the one-way latency,
in each direction, pipelined and in order, over the node's shaped veth. It emulates a
one-way delay per direction on each TCP byte stream (a request and its response pay 2 ×
latency); not loss, jitter, nor TCP's own behaviour under a real round trip (connection
set-up, slow start and the window see the relay's zero-delay hops) or a queue's interplay
with the delay. A node without a latency has no relay and stays at 0.

Each SuperNode gets ``--node-config "partition-id=i num-partitions=N link-down-mbps=D
link-up-mbps=U link-latency-ms=L link-real=true num-threads=T"`` (10000 Mbit/s for an
unshaped direction, ``L`` its relay's latency or 0, ``T = max(1, os.cpu_count() // N)``).
A node config is fixed when the SuperNode starts:
``shape(i, down, up)`` changes the kernel's rates live, but the app's *projected* transfer
times keep using the node config written at start; ``shape(..., restart_node=True)`` also
restarts that one SuperNode (about 5 s here) so that its node config says the new rates.

The SuperLink gets ``FEDVIT_LINKLAB=<workdir>/manifest.json``::

    {"nodes": {"<partition-id>": {"superlink-if": ..., "node-if": ...,
                                  "down-mbps": D or null, "up-mbps": U or null}}}

so the ServerApp (inside the SuperLink namespace, where ``/sys/class/net`` shows that
namespace's interfaces) can read the SuperLink-side veth counters, and samples them through
the run to measure the link model's per-call handling and per-object framing
(``server_app.calibration``).

Everything the lab creates is recorded in ``<workdir>/linklab.json`` (PIDs with their start
times from ``/proc/<pid>/stat``, namespaces, interfaces) before use; teardown (on leaving the
``with`` block, on Ctrl-C/SIGTERM, on any failure during start, or ``stop --dir``) kills
exactly the recorded processes and their descendants (SIGTERM, then SIGKILL), deletes exactly
the recorded namespaces (which removes their veths) and nothing else. Root and iproute2
(``ip netns``, ``tc``) are required.

Rates that change: ``play_trace`` (or ``flwr_run(trace=...)``, from the run's first round)
plays a trace file (``tools.replay.traces``) onto the links: ``tc`` rates and relay
latencies change at the trace's times, without restarting SuperNodes (their node configs
keep the links they started with); after the trace's last row its last values hold. The
wall-clock time of every applied change is kept (``lab.player.applied``,
``<workdir>/trace-applied.json``), and ``write_applied_trace`` writes the trace as applied,
aligned with any moment (e.g. the run's first round), for a replay of the same links.

Modules: ``lab`` (``LinkLab``: start, reshape, restart, stop), ``network`` (names,
namespaces, veths, shaping), ``netns`` (the ``ip``/``tc`` commands), ``record`` (what a lab
made, and teardown), ``supervise`` (the Flower processes and relays), ``relay`` (the delay
element), ``player`` (traces and latency changes), ``runs`` (the ``flwr`` CLI against the
lab), ``cli``.

Python API::

    with LinkLab(links=[(8, 8), None], workdir=Path("/tmp/lab")) as lab:
        proc = lab.flwr_run({"num-server-rounds": 1, "outputs-dir": "/tmp/out"}, timeout_s=300)
        lab.shape(0, 2, 1)          # node 0 now 2 Mbit/s down, 1 up (kernel only)
        lab.shape(0, 2, 1, restart_node=True)   # ... and its node config (SuperNode restart)
        lab.counters()              # {0: {"tx": ..., "rx": ...}, 1: {...}} SuperLink-side veths
    lab.leftovers()                 # [] after teardown

    with LinkLab([(8, 8)] * 2, workdir, latency_ms=50) as lab:   # 50 ms each way, both
        lab.flwr_run(cfg, trace=read_trace("traces/mobile-fluctuating.csv"))  # from the first round
        lab.set_latency(1, 100)
        lab.write_applied_trace(path, origin_wall_s)

CLI::

    python -m tools.deploy.linklab start --links "8:8 none" [--latency "50 none"]
        [--trace FILE] [--dir DIR]  # until Ctrl-C; a trace plays from when the lab is up
    python -m tools.deploy.linklab stop --dir DIR        # a lab left by a crash
"""

from tools.deploy.linklab.cli import parse_links
from tools.deploy.linklab.lab import UNSHAPED_MBPS, LinkLab
from tools.deploy.linklab.netns import LinkLabError
from tools.deploy.linklab.runs import format_run_config

__all__ = ["UNSHAPED_MBPS", "LinkLab", "LinkLabError", "format_run_config", "parse_links"]
