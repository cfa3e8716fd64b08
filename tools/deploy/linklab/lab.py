"""``LinkLab``: one SuperLink and N SuperNodes, each node behind its own shaped veth link.

The lab's parts: ``network`` (names, namespaces, veths, shaping), ``record`` (what it made,
and teardown), ``supervise`` (the Flower processes), ``runs`` (the ``flwr`` CLI against
it); this module holds them together: start, reshape, restart, stop. See the package's
docstring for the layout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedvit.config.paths import APP_ROOT
from fedvit.files import write_json
from tools.deploy.linklab.netns import LinkLabError, check_privileges, latencies, mbit
from tools.deploy.linklab.network import (
    LabNames,
    Rates,
    build_network,
    choose_tag,
    lab_manifest,
    shape_link,
    veth_counters,
)
from tools.deploy.linklab.player import TraceControl, TracePlayer, log_shows
from tools.deploy.linklab.record import RECORD, LabRecord, leftovers, load
from tools.deploy.linklab.runs import CONNECTION, FlwrCli
from tools.deploy.linklab.supervise import SUPERLINK_PORT, Supervisor

UNSHAPED_MBPS = 10000  # what an unshaped direction writes into the node config
MAX_NODES = 200
MANIFEST = "manifest.json"
SETTLE_S = 0.5  # after the SuperNodes joined: their superexecs start
FIRST_ROUND = r"\[ROUND 1/"  # Flower's log line as the strategy starts its first round

Link = Rates | None  # (down, up) Mbit/s, either None (unshaped); None = unshaped both ways


class LinkLab(TraceControl):
    """One SuperLink and ``len(links)`` SuperNodes, each node behind its own shaped veth link.

    ``links[i]`` is ``(down_mbps, up_mbps)`` (either may be None) or None (unshaped both
    ways). ``latency_ms`` (one value for every node, or one per node; None: none) gives a
    node a delay relay (``relay``) with that one-way latency, which ``set_latency`` and a
    trace can change; a node without one has no latency and cannot get any.
    ``start()`` (or entering the ``with`` block) builds and starts everything;
    ``stop()`` (or leaving it) tears it down. A failure during start tears down what was made.

    Raises:
        LinkLabError: from the constructor, for a bad number of links, a bad rate or a bad
            latency.
    """

    def __init__(self, links: Sequence[Link], workdir: Path | str, *,
                 latency_ms: float | Sequence[float | None] | None = None,
                 app_dir: Path | str = APP_ROOT, bin_dir: Path | str | None = None,
                 env: Mapping[str, str] | None = None, num_threads: int | None = None,
                 start_timeout_s: float = 90.0, stop_timeout_s: float = 15.0):
        if not 1 <= len(links) <= MAX_NODES:
            raise LinkLabError(f"1 to {MAX_NODES} links, got {len(links)}")
        self.links: list[Rates] = []
        for i, link in enumerate(links):
            down, up = (None, None) if link is None else link
            self.links.append((mbit(down, f"node {i} down"), mbit(up, f"node {i} up")))
        self.latency = latencies(latency_ms, len(self.links))
        self.workdir = Path(workdir).resolve()
        self.app_dir = Path(app_dir).resolve()
        self.bin_dir = Path(bin_dir) if bin_dir else _flower_bin()
        self.num_threads = num_threads or max(1, (os.cpu_count() or 1) // len(self.links))
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = self._environment(env)
        self.names = LabNames("")
        self.record: LabRecord | None = None
        self.timings: dict[str, float] = {}
        self._node_configs: dict[int, str] = {}
        self.history: dict[int, list[list]] = {}  # the manifest's: each node's links over time
        self._old_sigterm = None
        self.player: TracePlayer | None = None
        self.unshaped_mbps = UNSHAPED_MBPS

    # ----- names
    @property
    def tag(self) -> str:
        return self.names.tag

    @property
    def superlink_ns(self) -> str:
        return self.names.superlink_ns

    def node_ns(self, i: int) -> str:
        return self.names.node_ns(i)

    def superlink_if(self, i: int) -> str:
        return self.names.superlink_if(i)

    def node_if(self, i: int) -> str:
        return self.names.node_if(i)

    def netns_exec(self, node: int | None) -> list[str]:
        """``ip netns exec <ns>``: prefix of a command to run in node ``node``'s namespace
        (None: the SuperLink's)."""
        return self.names.netns_exec(node)

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def running(self) -> bool:
        return self.record is not None and not self.record.stopped

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

    def start(self) -> LinkLab:
        """Build the network, write the lab's files, start the SuperLink and SuperNodes.

        Raises:
            LinkLabError: not root, Flower's executables missing, a lab of ``workdir`` still
                up, or a part failed to start (what was made is torn down first).
        """
        if self.record is not None:
            raise LinkLabError("this lab is started already")
        check_privileges()
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            if not (self.bin_dir / exe).exists():
                raise LinkLabError(f"{exe} not found in {self.bin_dir} (run scripts/setup.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        previous = load(self.workdir / RECORD)
        if previous and not previous.get("stopped") and leftovers(previous):
            raise LinkLabError(f"{self.workdir} holds a lab that is still up: "
                               f"python -m tools.deploy.linklab stop --dir {self.workdir}")
        self.logs.mkdir(exist_ok=True)
        self.names = LabNames(choose_tag())
        self.record = LabRecord(self.workdir, self.tag)
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        t0 = time.monotonic()
        try:
            build_network(self.names, self.links, self.record)
            self._write_files()
            self._start_processes()
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t0
        return self

    def manifest(self) -> dict:
        return lab_manifest(self.names, self.links, self.history)

    def _link_changed(self, i: int) -> None:
        """Note node ``i``'s link as of now in its history, and rewrite the manifest."""
        down, up = self.links[i]
        self.history.setdefault(i, []).append([time.time(), down, up, self.latency[i] or 0.0])
        write_json(self.workdir / MANIFEST, self.manifest(), indent=1)

    def _write_files(self) -> None:
        for i in range(len(self.links)):
            self._link_changed(i)
        self.flwr_home.mkdir(exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f"# Written by tools/deploy/linklab: the SuperLink in netns {self.superlink_ns}.\n"
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
                f"link-down-mbps={rate(down)} link-up-mbps={rate(up)} "
                f"link-latency-ms={self.latency[i] or 0:g} "
                f"link-real=true "
                f"num-threads={self.num_threads}")

    def _supervisor(self) -> Supervisor:
        return Supervisor(self.names, self.bin_dir, self.workdir, self.record,
                          self.start_timeout_s, self.stop_timeout_s)

    def _start_node(self, i: int) -> tuple[subprocess.Popen, int]:
        self._node_configs[i] = self._node_config_of(i)
        return self._supervisor().start_node(i, self._node_configs[i], self.env,
                                             relayed=self.latency[i] is not None)

    def _start_processes(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        supervisor = self._supervisor()
        supervisor.start_superlink({**self.env, "FEDVIT_LINKLAB": str(self.workdir / MANIFEST)},
                                   deadline)
        self.timings["superlink_up_s"] = self.start_timeout_s - (deadline - time.monotonic())
        for i, latency in enumerate(self.latency):
            if latency is not None:
                supervisor.start_relay(i, latency, self.env, deadline)
        nodes = [self._start_node(i) for i in range(len(self.links))]
        for i, (node, offset) in enumerate(nodes):
            supervisor.wait_joined(i, node, offset, deadline)
        time.sleep(SETTLE_S)
        self.record.add_children()  # e.g. the superexecs, which run in sessions of their own

    def restart_node(self, i: int) -> float:
        """Restart SuperNode ``i`` (its process and descendants), so that its node config
        carries its current links; returns the seconds it took (until it joined again).
        Its old node ID leaves the federation (a SuperNode deactivates itself on SIGTERM).

        Raises:
            LinkLabError: the lab is not running, or the old SuperNode survived SIGKILL.
        """
        if not self.running:
            raise LinkLabError("the lab is not running")
        t0 = time.monotonic()
        supervisor = self._supervisor()
        supervisor.stop_node(i)
        node, offset = self._start_node(i)
        supervisor.wait_joined(i, node, offset, time.monotonic() + self.start_timeout_s)
        time.sleep(SETTLE_S)
        self.record.add_children()
        return time.monotonic() - t0

    # ----- use
    def __enter__(self) -> LinkLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _flwr(self) -> FlwrCli:
        return FlwrCli(self.names, self.bin_dir, self.env, self.flwr_home, self.logs,
                       self.workdir, self.record, self.stop_timeout_s)

    def flwr_command(self, run_config: Mapping | None = None, app_dir: Path | None = None
                     ) -> list[str]:
        """The `flwr run` command line for this lab (run it in ``app_dir``)."""
        return self._flwr().command(Path(app_dir or self.app_dir), run_config)

    def flwr_run(self, run_config: Mapping | None = None, timeout_s: float = 600.0, *,
                 app_dir: Path | str | None = None, trace=None,
                 trace_from: str | None = FIRST_ROUND) -> subprocess.CompletedProcess:
        """``flwr run <app_dir> linklab --stream`` inside the SuperLink namespace
        (``runs.FlwrCli.run``: its CompletedProcess, with ``run_id`` and ``status``).

        ``trace`` (``tools.replay.traces.LinkTraces``) is played onto the links during the
        run (``play_trace``), from the moment the run's streamed log shows ``trace_from`` (a
        regex; default: Flower's first round, so that the trace's times count from about
        the run's first round as a replay's do; Flower streams the ServerApp's log about
        0.5-1 s late; None: when `flwr run` starts); it stops when the run ends, the links
        keeping their last values. ``self.player.applied`` then says when each change was
        applied (``write_applied_trace`` aligns them with any moment, e.g. the first
        round's start as the run folder gives it).

        Raises:
            LinkLabError: the lab is not running, a trace this lab cannot play
                (``play_trace``), or as ``FlwrCli.run``.
        """
        if not self.running:
            raise LinkLabError("the lab is not running")
        if trace is not None:
            when = log_shows(self._flwr().next_log(), trace_from) if trace_from else None
            self.play_trace(trace, when=when, label=trace_from or "flwr run")
        t0 = time.monotonic()
        try:
            completed = self._flwr().run(Path(app_dir or self.app_dir), run_config, timeout_s)
        finally:
            if trace is not None:
                self.stop_trace()
        self.timings[f"{completed.log_path.stem}_s"] = time.monotonic() - t0
        return completed

    def flwr_cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Any `flwr` CLI command against the lab's SuperLink (e.g. "list", "linklab")."""
        return self._flwr().cli(*args, timeout_s=timeout_s)

    def shape(self, i: int, down_mbps: float | None, up_mbps: float | None, *,
              restart_node: bool = False) -> None:
        """Change node ``i``'s rates now (None: unshaped), and the manifest. A running
        SuperNode's node config cannot change: without ``restart_node`` it (and the app's
        projected transfer times) keeps the rates it started with; with it, SuperNode ``i``
        is restarted (a few seconds) so that its node config says the new rates.

        Raises:
            LinkLabError: the lab is not running, a bad rate, or a failed ``tc`` command.
        """
        if not self.running:
            raise LinkLabError("the lab is not running")
        down, up = mbit(down_mbps, f"node {i} down"), mbit(up_mbps, f"node {i} up")
        shape_link(self.names, i, down, up)
        self.links[i] = (down, up)
        self._link_changed(i)
        if restart_node:
            self.timings[f"restart_node_{i}_s"] = self.restart_node(i)

    def counters(self) -> dict[int, dict[str, int]]:
        """Byte counters of the SuperLink-side veths: tx = downlink, rx = uplink."""
        return veth_counters(self.names, len(self.links))

    def processes(self) -> list[dict]:
        """The recorded processes (``{"pid", "start", "name"}``)."""
        return self.record.processes if self.record else []

    def leftovers(self) -> list[str]:
        """What this instance created that still exists: namespaces, interfaces, processes."""
        return self.record.leftovers() if self.record else []

    # ----- teardown
    def stop(self) -> None:
        """Tear down exactly what this instance recorded (idempotent).

        Raises:
            LinkLabError: something recorded could not be removed (the message lists it).
        """
        if not self.running:
            return
        if self.player is not None:
            self.player.stop()
        t0 = time.monotonic()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.record.teardown(self.stop_timeout_s)
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self.timings["stop_s"] = time.monotonic() - t0


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
