"""A link lab: a real Flower deployment on one machine in which every SuperNode sits behind its
own real, shaped network link (Linux network namespaces, veth pairs and ``tc htb``).

Layout of one lab instance (``<tag>`` is short and unique to the instance, e.g. ``004vc0``)::

    netns ll-<tag>-sl      flower-superlink --host 0.0.0.0 --port 8000 (and its superexec,
      |                    which starts the ServerApp; `flwr` runs in here on 127.0.0.1:8000)
      veth ll<tag>s<i>     10.213.<i>.1/30   egress = node i's DOWNLINK (shaped)
      |
      veth ll<tag>n<i>     10.213.<i>.2/30   egress = node i's UPLINK (shaped)
    netns ll-<tag>-n<i>    flower-supernode --superlink 10.213.<i>.1:8000 --port 9100 (its
                           superexec and ClientApps talk to it on 127.0.0.1 in here)

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
shows the backlog and drops. No latency is emulated (``netem`` is not in this kernel):
``link-latency-ms=0`` in every node config.

Each SuperNode gets ``--node-config "partition-id=i num-partitions=N link-down-mbps=D
link-up-mbps=U link-latency-ms=0 num-threads=T"`` (10000 Mbit/s for an unshaped direction,
``T = max(1, os.cpu_count() // N)``). A node config is fixed when the SuperNode starts:
``shape(i, down, up)`` changes the kernel's rates live, but the app's *projected* transfer
times keep using the node config written at start; ``shape(..., restart_node=True)`` also
restarts that one SuperNode (about 5 s here) so that its node config says the new rates.

The SuperLink gets ``FEDVIT_LINKLAB=<workdir>/manifest.json``::

    {"nodes": {"<partition-id>": {"superlink-if": ..., "node-if": ...,
                                  "down-mbps": D or null, "up-mbps": U or null}}}

so the ServerApp (inside the SuperLink namespace, where ``/sys/class/net`` shows that
namespace's interfaces) can read the SuperLink-side veth counters.

Everything the lab creates is recorded in ``<workdir>/linklab.json`` (PIDs with their start
times from ``/proc/<pid>/stat``, namespaces, interfaces) before use; teardown (on leaving the
``with`` block, on Ctrl-C/SIGTERM, on any failure during start, or ``stop --dir``) kills
exactly the recorded processes and their descendants (SIGTERM, then SIGKILL), deletes exactly
the recorded namespaces (which removes their veths) and nothing else. Root and iproute2
(``ip netns``, ``tc``) are required.

Python API::

    with LinkLab(links=[(8, 8), None], workdir=Path("/tmp/lab")) as lab:
        proc = lab.flwr_run({"num-server-rounds": 1, "outputs-dir": "/tmp/out"}, timeout_s=300)
        lab.shape(0, 2, 1)          # node 0 now 2 Mbit/s down, 1 up (kernel only)
        lab.shape(0, 2, 1, restart_node=True)   # ... and its node config (SuperNode restart)
        lab.counters()              # {0: {"tx": ..., "rx": ...}, 1: {...}} SuperLink-side veths
    lab.leftovers()                 # [] after teardown

CLI::

    python -m tools.linklab start --links "8:8 none" [--dir DIR]   # foreground until Ctrl-C
    python -m tools.linklab stop --dir DIR                         # a lab left by a crash
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tools.netns import (
    MTU_FRAME,
    LinkLabError,
    apply_shaping,
    check_privileges,
    mbit,
    netns_list,
    run,
)
from tools.processes import alive, descendants, start_time, terminate

APP_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "linklab"
SUPERLINK_PORT = 8000  # inside the SuperLink namespace: no other lab can collide with it
SUPERNODE_PORT = 9100  # inside each node namespace
SUBNET = "10.213"  # node i: 10.213.i.1/30 (SuperLink side), 10.213.i.2/30 (node side)
UNSHAPED_MBPS = 10000  # what an unshaped direction writes into the node config
MAX_NODES = 200
RECORD = "linklab.json"
MANIFEST = "manifest.json"

Link = tuple[float | None, float | None] | None  # (down, up) Mbit/s; None = unshaped

_counter = itertools.count()


# ---------------------------------------------------------------------------------------------
# run config


def format_run_config(run_config: Mapping[str, bool | int | float | str]) -> str:
    """``{"a": 1, "b": "x", "c": True}`` -> ``a=1 b='x' c=true`` for ``flwr run --run-config``."""
    parts = []
    for key, value in run_config.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise LinkLabError(f"run-config key {key!r} is not a bare TOML key")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = repr(value) if math.isfinite(value) else str(value).replace("infinity", "inf")
        elif isinstance(value, str):
            if "'" not in value and "\n" not in value:
                text = f"'{value}'"  # TOML literal string: no escapes
            elif '"' not in value:
                text = json.dumps(value)  # TOML basic string, JSON escapes are valid TOML
            else:
                raise LinkLabError(f"run-config value {value!r} holds both quote characters")
        else:
            raise LinkLabError(f"run-config value for {key!r} must be bool/int/float/str, "
                               f"got {type(value).__name__}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_links(text: str) -> list[Link]:
    """``"8:8 none 20:5 4"`` -> ``[(8.0, 8.0), None, (20.0, 5.0), (4.0, 4.0)]``; either side of
    a pair may be ``none`` (that direction unshaped)."""
    links: list[Link] = []
    for entry in text.split():
        if entry.lower() == "none":
            links.append(None)
            continue
        sides = entry.split(":")
        if len(sides) == 1:
            sides = sides * 2
        if len(sides) != 2:
            raise LinkLabError(f"link {entry!r} is not DOWN:UP (Mbit/s), DOWN, or none")
        try:
            down, up = (None if s.lower() == "none" else float(s) for s in sides)
        except ValueError as err:
            raise LinkLabError(f"link {entry!r} is not DOWN:UP (Mbit/s), DOWN, or none") from err
        links.append((mbit(down, "down"), mbit(up, "up")))
    if not links:
        raise LinkLabError("no links given")
    return links


# ---------------------------------------------------------------------------------------------
# the lab


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


class LinkLab:
    """One SuperLink and ``len(links)`` SuperNodes, each node behind its own shaped veth link.

    ``links[i]`` is ``(down_mbps, up_mbps)`` (either may be None) or None (unshaped both
    ways). ``start()`` (or entering the ``with`` block) builds and starts everything;
    ``stop()`` (or leaving it) tears it down. A failure during start tears down what was made.
    """

    def __init__(self, links: Sequence[Link], workdir: Path | str, *,
                 app_dir: Path | str = APP_ROOT, bin_dir: Path | str | None = None,
                 env: Mapping[str, str] | None = None, num_threads: int | None = None,
                 start_timeout_s: float = 90.0, stop_timeout_s: float = 15.0):
        if not 1 <= len(links) <= MAX_NODES:
            raise LinkLabError(f"1 to {MAX_NODES} links, got {len(links)}")
        self.links: list[tuple[float | None, float | None]] = []
        for i, link in enumerate(links):
            down, up = (None, None) if link is None else link
            self.links.append((mbit(down, f"node {i} down"), mbit(up, f"node {i} up")))
        self.workdir = Path(workdir).resolve()
        self.app_dir = Path(app_dir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else _flower_bin()
        self.num_threads = num_threads or max(1, (os.cpu_count() or 1) // len(self.links))
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = self._environment(env)
        self.tag = ""
        self.record: dict = {}
        self.timings: dict[str, float] = {}
        self._popens: list[subprocess.Popen] = []
        self._node_configs: dict[int, str] = {}
        self._old_sigterm = None
        self._started = False
        self._lock = threading.Lock()

    # ----- names
    @property
    def superlink_ns(self) -> str:
        return f"ll-{self.tag}-sl"

    def node_ns(self, i: int) -> str:
        return f"ll-{self.tag}-n{i}"

    def superlink_if(self, i: int) -> str:
        return f"ll{self.tag}s{i}"

    def node_if(self, i: int) -> str:
        return f"ll{self.tag}n{i}"

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def netns_exec(self, node: int | None) -> list[str]:
        """``ip netns exec <ns>``: prefix of a command to run in node ``node``'s namespace
        (None: the SuperLink's)."""
        return ["ip", "netns", "exec", self.superlink_ns if node is None else self.node_ns(node)]

    # ----- set-up
    def _environment(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra or {})
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        # flwr 1.41 supercore/superexec/run_superexec.py reads it (default 1 s, 0.01..60)
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
        env.pop("FLWR_HOME", None)  # each process gets its own below
        return env

    def _choose_tag(self) -> str:
        taken = netns_list()
        while True:
            # the PID in 5 base-36 digits (Linux PIDs < 36**5), then this process's count:
            # no two live processes can make the same tag
            tag = f"{_b36(os.getpid()):0>5}{_b36(next(_counter))}"
            if not any(ns.startswith(f"ll-{tag}-") for ns in taken):
                return tag

    def _save(self) -> None:
        tmp = self.workdir / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.replace(self.workdir / RECORD)

    def _record_proc(self, pid: int, name: str) -> dict | None:
        st = start_time(pid)
        if st is None:
            return None
        proc = {"pid": pid, "start": st, "name": name}
        with self._lock:
            if not any(p["pid"] == pid and p["start"] == st for p in self.record["processes"]):
                self.record["processes"].append(proc)
                self._save()
        return proc

    def _record_children(self) -> None:
        for proc in list(self.record["processes"]):
            if alive(proc):
                for child in descendants(int(proc["pid"])):
                    self._record_proc(child["pid"], child["name"])

    def _ip(self, *args: str) -> None:
        run(["ip", *args])

    def _add_netns(self, ns: str) -> None:
        self.record["namespaces"].append(ns)  # recorded first: a crash right after leaves a
        self._save()  # name that `stop` can delete; a failed add is un-recorded below
        try:
            self._ip("netns", "add", ns)
        except LinkLabError:
            self.record["namespaces"].remove(ns)
            self._save()
            raise
        self._ip("-n", ns, "link", "set", "lo", "up")

    def start(self) -> LinkLab:
        if self._started:
            raise LinkLabError("this lab is started already")
        check_privileges()
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            if not (self.bin_dir / exe).exists():
                raise LinkLabError(f"{exe} not found in {self.bin_dir} (run scripts/setup.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        old = self.workdir / RECORD
        if old.exists():
            previous = json.loads(old.read_text())
            if not previous.get("stopped") and _record_leftovers(previous):
                raise LinkLabError(f"{self.workdir} holds a lab that is still up: "
                                   f"python -m tools.linklab stop --dir {self.workdir}")
        self.logs.mkdir(exist_ok=True)
        self.tag = self._choose_tag()
        self.record = {"tag": self.tag, "owner": {"pid": os.getpid(),
                                                   "start": start_time(os.getpid())},
                       "workdir": str(self.workdir), "namespaces": [], "interfaces": [],
                       "processes": [], "stopped": False}
        self._started = True
        self._save()
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        t0 = time.monotonic()
        try:
            self._build_network()
            self._write_files()
            self._start_processes()
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t0
        return self

    def _build_network(self) -> None:
        self._add_netns(self.superlink_ns)
        for i, (down, up) in enumerate(self.links):
            ns, sif, nif = self.node_ns(i), self.superlink_if(i), self.node_if(i)
            self._add_netns(ns)
            self.record["interfaces"] += [{"ns": self.superlink_ns, "name": sif},
                                          {"ns": ns, "name": nif}]
            self._save()
            # created directly inside the two namespaces: never visible in the host's
            self._ip("link", "add", sif, "netns", self.superlink_ns, "type", "veth",
                     "peer", "name", nif, "netns", ns)
            self._ip("-n", self.superlink_ns, "addr", "add", f"{SUBNET}.{i}.1/30", "dev", sif)
            self._ip("-n", ns, "addr", "add", f"{SUBNET}.{i}.2/30", "dev", nif)
            # One segment per packet, as on a real link: with the veth's default 64 KiB
            # GSO packets, htb lets a transfer out in lumps, and the byte counters (and the
            # start of a transfer, which a whole lump leaves at once) are off by a lump.
            for netns, dev in ((self.superlink_ns, sif), (ns, nif)):
                self._ip("-n", netns, "link", "set", dev, "gso_max_segs", "1",
                         "gso_max_size", str(MTU_FRAME))
            self._ip("-n", self.superlink_ns, "link", "set", sif, "up")
            self._ip("-n", ns, "link", "set", nif, "up")
            apply_shaping(self.superlink_ns, sif, down)
            apply_shaping(ns, nif, up)

    def manifest(self) -> dict:
        return {"nodes": {str(i): {"superlink-if": self.superlink_if(i),
                                   "node-if": self.node_if(i),
                                   "down-mbps": down, "up-mbps": up}
                          for i, (down, up) in enumerate(self.links)}}

    def _write_files(self) -> None:
        (self.workdir / MANIFEST).write_text(json.dumps(self.manifest(), indent=1))
        self.flwr_home.mkdir(exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f"# Written by tools/linklab.py: the SuperLink in netns {self.superlink_ns}.\n"
            f"# Use it inside that namespace: ip netns exec {self.superlink_ns} ...\n"
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{SUPERLINK_PORT}"\n'
            "insecure = true\n")

    def node_config(self, i: int) -> str:
        """The node config SuperNode ``i`` runs with (from its links when it started)."""
        return self._node_configs.get(i) or self._node_config_of(i)

    def _node_config_of(self, i: int) -> str:
        down, up = self.links[i]
        rate = lambda v: f"{UNSHAPED_MBPS if v is None else v:g}"  # noqa: E731
        return (f"partition-id={i} num-partitions={len(self.links)} "
                f"link-down-mbps={rate(down)} link-up-mbps={rate(up)} link-latency-ms=0 "
                f"link-real=true "
                f"num-threads={self.num_threads}")

    def _launch(self, name: str, node: int | None, argv: list[str], env: dict[str, str]
                ) -> subprocess.Popen:
        """Start ``argv`` in a namespace, in its own session, output appended to
        logs/<name>.log. `ip netns exec` execs the command, so the PID is the command's own."""
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.netns_exec(node) + argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                    env={**env, "FLWR_HOME": str(home)},
                                    start_new_session=True)
        self._popens.append(proc)
        if self._record_proc(proc.pid, name) is None:
            raise LinkLabError(f"{name} exited at once:\n{self._tail(name)}")
        return proc

    def _tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _superlink_answers(self) -> bool:
        probe = (f"import urllib.request; urllib.request.urlopen("
                 f"'http://127.0.0.1:{SUPERLINK_PORT}/health', timeout=2)")
        try:
            return subprocess.run(self.netns_exec(None) + [sys.executable, "-c", probe],
                                  capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_processes(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        link_env = {**self.env, "FEDVIT_LINKLAB": str(self.workdir / MANIFEST)}
        superlink = self._launch("superlink", None, [
            str(self.bin_dir / "flower-superlink"), "--insecure", "--host", "0.0.0.0",
            "--port", str(SUPERLINK_PORT), "--disable-runtime-dependency-installation"],
            link_env)
        while not self._superlink_answers():
            if superlink.poll() is not None:
                raise LinkLabError(f"flower-superlink exited ({superlink.returncode}) during "
                                   f"start-up:\n{self._tail('superlink')}")
            if time.monotonic() > deadline:
                raise LinkLabError(f"flower-superlink did not answer within "
                                   f"{self.start_timeout_s:.0f} s:\n{self._tail('superlink')}")
            time.sleep(0.3)
        self.timings["superlink_up_s"] = self.start_timeout_s - (deadline - time.monotonic())
        nodes = [self._launch_node(i) for i in range(len(self.links))]
        for i, (node, offset) in enumerate(nodes):
            self._wait_joined(i, node, offset, deadline)
        time.sleep(0.5)
        self._record_children()  # e.g. the superexecs, which run in sessions of their own

    def _launch_node(self, i: int) -> tuple[subprocess.Popen, int]:
        """Start SuperNode ``i`` with the node config of its current links; returns the
        process and where its output starts in its log."""
        log = self.logs / f"supernode-{i}.log"
        offset = log.stat().st_size if log.exists() else 0
        self._node_configs[i] = self._node_config_of(i)
        proc = self._launch(f"supernode-{i}", i, [
            str(self.bin_dir / "flower-supernode"), "--insecure",
            "--superlink", f"{SUBNET}.{i}.1:{SUPERLINK_PORT}",
            "--port", str(SUPERNODE_PORT), "--node-config", self._node_configs[i]], self.env)
        return proc, offset

    def _wait_joined(self, i: int, node: subprocess.Popen, offset: int, deadline: float
                     ) -> None:
        """Until SuperNode ``i`` logs "SuperNode ID: ..." (the SuperLink accepted it)."""
        log = self.logs / f"supernode-{i}.log"
        while True:
            with open(log, "rb") as f:
                f.seek(offset)
                if b"SuperNode ID:" in f.read():
                    return
            if node.poll() is not None:
                raise LinkLabError(f"supernode-{i} exited ({node.returncode}):\n"
                                   f"{self._tail(f'supernode-{i}')}")
            if time.monotonic() > deadline:
                raise LinkLabError(f"supernode-{i} did not join within "
                                   f"{self.start_timeout_s:.0f} s:\n"
                                   f"{self._tail(f'supernode-{i}')}")
            time.sleep(0.2)

    def restart_node(self, i: int) -> float:
        """Restart SuperNode ``i`` (its process and descendants), so that its node config
        carries its current links; returns the seconds it took (until it joined again).
        Its old node ID leaves the federation (a SuperNode deactivates itself on SIGTERM)."""
        if not self._started or self.record.get("stopped"):
            raise LinkLabError("the lab is not running")
        t0 = time.monotonic()
        name = f"supernode-{i}"
        old = [p for p in self.record["processes"] if p["name"] == name]
        old_ids = {(p["pid"], p["start"]) for p in old}
        old_ids |= {(c["pid"], c["start"]) for p in old if alive(p)
                    for c in descendants(int(p["pid"]))}
        left = terminate(old, self.stop_timeout_s)
        if left:
            raise LinkLabError(f"{name} survived SIGKILL: {left}")
        with self._lock:  # gone: off the record (the CLI watches the live SuperNodes)
            self.record["processes"] = [p for p in self.record["processes"]
                                        if (p["pid"], p["start"]) not in old_ids]
            self._save()
        node, offset = self._launch_node(i)
        self._wait_joined(i, node, offset, time.monotonic() + self.start_timeout_s)
        time.sleep(0.5)
        self._record_children()
        return time.monotonic() - t0

    # ----- use
    def __enter__(self) -> LinkLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def flwr_command(self, run_config: Mapping | None = None, app_dir: Path | None = None
                     ) -> list[str]:
        """The `flwr run` command line for this lab (run it in ``app_dir``)."""
        argv = self.netns_exec(None) + [
            "env", f"FLWR_HOME={self.flwr_home}", "FLWR_TELEMETRY_ENABLED=0",
            "FLWR_DISABLE_UPDATE_CHECK=1",
            str(self.bin_dir / "flwr"), "run", str(app_dir or self.app_dir), CONNECTION,
            "--stream"]
        if run_config:
            argv += ["--run-config", format_run_config(run_config)]
        return argv

    def flwr_run(self, run_config: Mapping | None = None, timeout_s: float = 600.0, *,
                 app_dir: Path | str | None = None) -> subprocess.CompletedProcess:
        """``flwr run <app_dir> linklab --stream`` inside the SuperLink namespace; returns the
        CompletedProcess (stdout = the whole output, plus ``run_id`` and ``status``). Raises
        LinkLabError with the output's tail when it fails, times out, or the SuperLink does not
        report the run as ``finished:completed``."""
        if not self._started or self.record.get("stopped"):
            raise LinkLabError("the lab is not running")
        app = Path(app_dir or self.app_dir).resolve()
        n = sum(1 for _ in self.logs.glob("flwr-run-*.log"))
        name = f"flwr-run-{n}"
        argv = [str(self.bin_dir / "flwr"), "run", str(app), CONNECTION, "--stream"]
        if run_config:
            argv += ["--run-config", format_run_config(run_config)]
        env = {**self.env, "FLWR_HOME": str(self.flwr_home)}
        log_path = self.logs / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(self.netns_exec(None) + argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=app, env=env,
                                    start_new_session=True)
        self._popens.append(proc)
        rec = self._record_proc(proc.pid, name)
        t0 = time.monotonic()
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if rec:
                terminate([rec], self.stop_timeout_s)
            proc.wait()
            started = re.search(r"Successfully started run (\d+)",
                                log_path.read_text(errors="replace"))
            if started:  # the run itself goes on without its CLI: stop it on the SuperLink
                self.flwr_cli("stop", started.group(1), CONNECTION)
            raise LinkLabError(f"`flwr run` timed out after {timeout_s:.0f} s "
                               f"({log_path}):\n{self._tail(name, 40)}") from None
        self.timings[f"{name}_s"] = time.monotonic() - t0
        output = log_path.read_text(errors="replace")
        completed = subprocess.CompletedProcess(argv, returncode, output, "")
        if returncode != 0:
            raise LinkLabError(f"`flwr run` failed ({returncode}, {log_path}):\n"
                               f"{self._tail(name, 40)}")
        match = re.search(r"Successfully started run (\d+)", output)
        if not match:
            raise LinkLabError(f"`flwr run` started no run ({log_path}):\n{self._tail(name, 40)}")
        run_id = int(match.group(1))
        status, deadline = None, time.monotonic() + 15
        while not (status or "").startswith("finished") and time.monotonic() < deadline:
            status = self.run_status(run_id)
            time.sleep(0.0 if (status or "").startswith("finished") else 0.5)
        if status != "finished:completed":
            raise LinkLabError(f"run {run_id} ended as {status!r} ({log_path}):\n"
                               f"{self._tail(name, 40)}")
        completed.run_id, completed.status = run_id, status  # type: ignore[attr-defined]
        return completed

    def flwr_cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Any `flwr` CLI command against the lab's SuperLink (e.g. "list", "linklab")."""
        return subprocess.run(self.netns_exec(None) + [str(self.bin_dir / "flwr"), *args],
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**self.env, "FLWR_HOME": str(self.flwr_home)},
                              cwd=self.workdir)

    def run_status(self, run_id: int) -> str | None:
        """The SuperLink's status of ``run_id`` (e.g. "finished:completed"), None if unknown."""
        proc = self.flwr_cli("list", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(proc.stdout).get("runs", [])
        except (json.JSONDecodeError, AttributeError):
            return None
        for entry in runs:
            if str(entry.get("run-id")) == str(run_id):
                return entry.get("status")
        return None

    def shape(self, i: int, down_mbps: float | None, up_mbps: float | None, *,
              restart_node: bool = False) -> None:
        """Change node ``i``'s rates now (None: unshaped), and the manifest. A running
        SuperNode's node config cannot change: without ``restart_node`` it (and the app's
        projected transfer times) keeps the rates it started with; with it, SuperNode ``i``
        is restarted (a few seconds) so that its node config says the new rates."""
        if not self._started or self.record.get("stopped"):
            raise LinkLabError("the lab is not running")
        down, up = mbit(down_mbps, f"node {i} down"), mbit(up_mbps, f"node {i} up")
        apply_shaping(self.superlink_ns, self.superlink_if(i), down)
        apply_shaping(self.node_ns(i), self.node_if(i), up)
        self.links[i] = (down, up)
        (self.workdir / MANIFEST).write_text(json.dumps(self.manifest(), indent=1))
        if restart_node:
            self.timings[f"restart_node_{i}_s"] = self.restart_node(i)

    def counters(self) -> dict[int, dict[str, int]]:
        """Byte counters of the SuperLink-side veths: tx = downlink, rx = uplink."""
        out = run(["ip", "-n", self.superlink_ns, "-s", "-j", "link", "show"]).stdout
        stats = {link["ifname"]: link["stats64"] for link in json.loads(out)}
        return {i: {"tx": int(stats[self.superlink_if(i)]["tx"]["bytes"]),
                    "rx": int(stats[self.superlink_if(i)]["rx"]["bytes"])}
                for i in range(len(self.links))}

    def processes(self) -> list[dict]:
        return list(self.record.get("processes", []))

    def leftovers(self) -> list[str]:
        """What this instance created that still exists: namespaces, interfaces, processes."""
        return _record_leftovers(self.record) if self.record else []

    # ----- teardown
    def stop(self) -> None:
        """Tear down exactly what this instance recorded (idempotent)."""
        if not self.record or self.record.get("stopped"):
            return
        t0 = time.monotonic()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._record_children()
            problems = teardown(self.record, self.stop_timeout_s)
            for proc in self._popens:  # reap our own children (no zombies)
                try:
                    proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            self.record["stopped"] = True
            self._save()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.timings["stop_s"] = time.monotonic() - t0
        if problems:
            raise LinkLabError("teardown left: " + "; ".join(problems))


def _sigterm_to_exit(signum, frame):  # SIGTERM unwinds like Ctrl-C: teardown runs
    raise SystemExit(128 + signum)


def _flower_bin() -> Path:
    here = Path(sys.executable).parent
    if (here / "flower-superlink").exists():
        return here
    found = shutil.which("flower-superlink")
    if found:
        return Path(found).parent
    raise LinkLabError("flower-superlink not found (run scripts/setup.sh)")


def _record_leftovers(record: Mapping) -> list[str]:
    left = [f"process {p['name']} (PID {p['pid']})" for p in record.get("processes", [])
            if alive(p)]
    existing = netns_list()
    left += [f"netns {ns}" for ns in record.get("namespaces", []) if ns in existing]
    for iface in record.get("interfaces", []):
        if iface["ns"] in existing:
            if run(["ip", "-n", iface["ns"], "link", "show", "dev", iface["name"]],
                    check=False).returncode == 0:
                left.append(f"interface {iface['name']} (netns {iface['ns']})")
        elif Path("/sys/class/net", iface["name"]).exists():
            left.append(f"interface {iface['name']} (host namespace)")
    return left


def teardown(record: Mapping, stop_timeout_s: float = 15.0) -> list[str]:
    """Kill the recorded processes and their descendants, delete the recorded namespaces (and
    with them their veths). Returns what could not be removed (empty when all went)."""
    problems = []
    survivors = terminate(record.get("processes", []), stop_timeout_s)
    problems += [f"process {p['name']} (PID {p['pid']}) survived SIGKILL" for p in survivors]
    existing = netns_list()
    for ns in reversed(record.get("namespaces", [])):
        if ns not in existing:
            continue
        pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
        if pids:  # not ours (not recorded, not a descendant): left alone, but the namespace
            problems.append(f"netns {ns} still holds processes {' '.join(pids)} that the "
                            "lab did not start")  # lives on while they do
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0:
            problems.append(f"`ip netns del {ns}`: {proc.stderr.strip()}")
    # a veth whose namespace went is gone with it (deleting one end removes the pair)
    left = [x for x in _record_leftovers(record) if not x.startswith("process ")]
    return list(dict.fromkeys(problems + left))


# ---------------------------------------------------------------------------------------------
# CLI


def _cmd_start(args: argparse.Namespace) -> int:
    links = parse_links(args.links)
    lab = LinkLab(links, args.dir, app_dir=args.app_dir, start_timeout_s=args.timeout)
    _say(f"linklab: starting {len(links)} SuperNodes in {lab.workdir}")
    return_code = 1
    try:
        lab.start()  # Ctrl-C or SIGTERM during start: start() tears down what it made
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        for i, (down, up) in enumerate(lab.links):
            _say(f"linklab: node {i}: netns {lab.node_ns(i)}, {lab.superlink_if(i)} <-> "
                 f"{lab.node_if(i)}, down {down or 'unshaped'} / up {up or 'unshaped'} "
                 "Mbit/s")
        _say(f"linklab: up in {lab.timings['start_s']:.1f} s (SuperLink netns "
             f"{lab.superlink_ns}, logs {lab.logs})\n\nRun the app against it (from "
             f"{lab.app_dir}):\n\n  {shlex.join(lab.flwr_command())}\n\n"
             f"Ctrl-C here (or `python -m tools.linklab stop --dir {lab.workdir}`) stops it.")
        return_code = 0
        while not stop.wait(1.0):
            gone = [p["name"] for p in lab.processes()
                    if p["name"] in ("superlink",) or p["name"].startswith("supernode-")
                    if not alive(p)]
            if gone:
                _say(f"linklab: {', '.join(gone)} exited; stopping the lab", file=sys.stderr)
                return_code = 1
                break
    except (KeyboardInterrupt, SystemExit):
        _say("linklab: interrupted during start-up", file=sys.stderr)
        return_code = 130
    finally:  # teardown first: a closed stdout must not keep it from running
        lab.stop()
        _say(f"linklab: stopped in {lab.timings.get('stop_s', 0):.1f} s; leftovers: "
             f"{lab.leftovers() or 'none'}")
    return return_code


def _say(*args, file=None) -> None:
    """print, flushed; a closed stdout/stderr (the reader went away) is ignored."""
    try:
        print(*args, file=file or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def _cmd_stop(args: argparse.Namespace) -> int:
    path = Path(args.dir) / RECORD
    if not path.is_file():
        print(f"linklab: no lab recorded in {args.dir}", file=sys.stderr)
        return 1
    record = json.loads(path.read_text())
    if record.get("stopped"):
        print(f"linklab: the lab in {args.dir} was stopped already")
        return 0
    owner = record.get("owner") or {}
    if owner.get("pid") and alive({"pid": owner["pid"], "start": owner.get("start")}) \
            and owner["pid"] != os.getpid():
        os.kill(int(owner["pid"]), signal.SIGTERM)  # it tears its own lab down
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _load(path).get("stopped"):
            time.sleep(0.2)
        record = _load(path) or record
    if not record.get("stopped"):
        check_privileges()
        problems = teardown(record)
        record["stopped"] = True
        path.write_text(json.dumps(record, indent=1))
        if problems:
            print("linklab: teardown left: " + "; ".join(problems), file=sys.stderr)
            return 1
    print(f"linklab: stopped the lab in {args.dir}")
    return 0


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.linklab", description=__doc__
                                     .split("\n\n")[0], formatter_class=argparse
                                     .RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start a lab, stay in the foreground until Ctrl-C")
    start.add_argument("--links", required=True,
                       help='per node "DOWN:UP" Mbit/s or "none", e.g. "8:8 none 20:5"')
    start.add_argument("--dir", default=str(APP_ROOT / ".flwr" / "linklab"),
                       help="work dir: record, manifest, logs, FLWR_HOME")
    start.add_argument("--app-dir", default=str(APP_ROOT))
    start.add_argument("--timeout", type=float, default=90.0, help="start-up timeout (s)")
    stop = sub.add_parser("stop", help="tear down the lab recorded in --dir")
    stop.add_argument("--dir", default=str(APP_ROOT / ".flwr" / "linklab"))
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return _cmd_start(args) if args.cmd == "start" else _cmd_stop(args)
    except LinkLabError as err:
        print(f"linklab: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
