"""tools/deploy/linklab on real kernel links: namespaces, veth pairs, htb shaping, a real SuperLink
and SuperNodes, and a teardown that leaves nothing behind (no mocks; about 30 s).

Needs root and iproute2 (`ip netns`, `tc`); skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.labs import needs_root
from tools.deploy.linklab import LinkLab, format_run_config, parse_links
from tools.deploy.linklab.netns import LinkLabError, check_privileges, netns_list
from tools.deploy.processes import start_time

ROOT = Path(__file__).resolve().parents[2]

# A bulk TCP transfer: `listen|connect ADDR PORT send|recv NBYTES`. The receiver prints the
# bytes and seconds after the first WARM bytes (slow start and the htb burst left out).
TRANSFER = textwrap.dedent("""
    import json, socket, sys, time
    role, addr, port, mode, n = sys.argv[1:6]
    n, port, warm = int(n), int(port), 64 * 1024
    if role == "listen":
        srv = socket.create_server((addr, port))
        print("ready", flush=True)
        sock, _ = srv.accept()
    else:
        sock = socket.create_connection((addr, port), timeout=30)
    if mode == "send":
        sock.sendall(b"x" * n)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    else:
        got, t_warm = 0, None
        while got < n:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
            if t_warm is None and got >= warm:
                t_warm, at_warm = time.monotonic(), got
        t_end = time.monotonic()
        print(json.dumps({"bytes": got - at_warm, "seconds": t_end - t_warm}), flush=True)
    sock.close()
""")


def _transfer(lab: LinkLab, node: int, direction: str, nbytes: int) -> float:
    """Goodput in Mbit/s of ``nbytes`` over node ``node``'s link (SuperLink ns <-> node ns)."""
    addr, port = f"10.213.{node}.1", 5201
    sl_mode, node_mode = ("send", "recv") if direction == "down" else ("recv", "send")
    py = [sys.executable, "-c", TRANSFER]
    server = subprocess.Popen(lab.netns_exec(None) + py + ["listen", addr, str(port), sl_mode,
                                                          str(nbytes)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(lab.netns_exec(node) + py + ["connect", addr, str(port),
                                                            node_mode, str(nbytes)],
                                capture_output=True, text=True, timeout=30)
        assert client.returncode == 0, client.stderr
        out = client.stdout if direction == "down" else server.communicate(timeout=30)[0]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    result = json.loads(out.strip().splitlines()[-1])
    return result["bytes"] * 8 / result["seconds"] / 1e6


def _tc(ns: str, what: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", ns, "-s", what, "show", "dev", dev],
                          capture_output=True, text=True, check=True).stdout


def _alive(procs: list[dict]) -> list[dict]:
    return [p for p in procs if start_time(p["pid"]) == p["start"]]


def test_parsing_and_run_config():
    assert parse_links("8:2 none 4 none:3") == [(8.0, 2.0), None, (4.0, 4.0), (None, 3.0)]
    for bad in ("", "8:2:1", "x", "0:1", "-1"):
        with pytest.raises(LinkLabError):
            parse_links(bad)
    assert format_run_config({"strategy": "fedlora", "num-server-rounds": 1, "a": 0.5,
                              "weights-path": "", "link-emulate": False}) == \
        "strategy='fedlora' num-server-rounds=1 a=0.5 weights-path='' link-emulate=false"
    assert format_run_config({"s": "it's"}) == 's="it\'s"'


@needs_root
def test_lab_shapes_links_and_leaves_nothing(tmp_path):
    """2 nodes, node 0 shaped 8 Mbit/s down / 2 up, node 1 unshaped: the network, the
    shaping (measured), both SuperNodes joined, live reshaping (with and without a SuperNode
    restart); then nothing of it is left."""
    t0 = time.monotonic()
    lab = LinkLab([(8, 2), None], tmp_path / "lab")
    with lab:
        started = time.monotonic() - t0
        namespaces = netns_list()
        assert {lab.superlink_ns, lab.node_ns(0), lab.node_ns(1)} <= namespaces
        for i in range(2):
            for ns, dev in ((lab.superlink_ns, lab.superlink_if(i)),
                            (lab.node_ns(i), lab.node_if(i))):
                assert len(dev) <= 15
                link = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev],
                                      capture_output=True, text=True, check=True).stdout
                assert json.loads(link)[0]["operstate"] == "UP"
        # shaping: htb with the node's rates on node 0, nothing on node 1
        assert "qdisc htb 1: " in _tc(lab.superlink_ns, "qdisc", lab.superlink_if(0))
        assert "rate 8Mbit ceil 8Mbit" in _tc(lab.superlink_ns, "class", lab.superlink_if(0))
        assert "rate 2Mbit ceil 2Mbit" in _tc(lab.node_ns(0), "class", lab.node_if(0))
        assert "htb" not in _tc(lab.superlink_ns, "qdisc", lab.superlink_if(1))
        assert "htb" not in _tc(lab.node_ns(1), "qdisc", lab.node_if(1))
        # both joined, and the node config written for each
        for i in range(2):
            assert "SuperNode ID:" in (lab.logs / f"supernode-{i}.log").read_text()
        assert "link-down-mbps=8 link-up-mbps=2 link-latency-ms=0" in lab.node_config(0)
        assert "link-down-mbps=10000 link-up-mbps=10000" in lab.node_config(1)
        manifest = json.loads((lab.workdir / "manifest.json").read_text())
        (started_at, *link_0), = manifest["nodes"]["0"].pop("history")
        assert manifest["nodes"]["0"] == {"superlink-if": lab.superlink_if(0),
                                          "node-if": lab.node_if(0),
                                          "down-mbps": 8.0, "up-mbps": 2.0}
        assert link_0 == [8.0, 2.0, 0.0] and started_at <= time.time()
        assert manifest["nodes"]["1"]["down-mbps"] is None
        # the SuperLink namespace's own view of its veths (what the ServerApp reads)
        sysfs = subprocess.run(lab.netns_exec(None) + ["ls", "/sys/class/net"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert sorted(sysfs) == sorted(["lo", lab.superlink_if(0), lab.superlink_if(1)])
        # measured rates, bounded: 2 MB down at 8 Mbit/s, 0.75 MB up at 2 Mbit/s (~5 s)
        before = lab.counters()
        down = _transfer(lab, 0, "down", 2_000_000)
        up = _transfer(lab, 0, "up", 750_000)
        after = lab.counters()
        qdisc = _tc(lab.superlink_ns, "qdisc", lab.superlink_if(0))
        print(f"\nlab started in {started:.1f} s; node 0 goodput: down {down:.2f} Mbit/s "
              f"(shaped 8), up {up:.2f} Mbit/s (shaped 2)\n{qdisc}")
        assert 8 * 0.85 <= down <= 8 * 1.15
        assert 2 * 0.85 <= up <= 2 * 1.15
        assert after[0]["tx"] - before[0]["tx"] >= 2_000_000
        assert after[0]["rx"] - before[0]["rx"] >= 750_000
        assert after[1]["tx"] - before[1]["tx"] < 200_000
        # live reshaping
        lab.shape(0, 4, None)
        assert "rate 4Mbit ceil 4Mbit" in _tc(lab.superlink_ns, "class", lab.superlink_if(0))
        assert "htb" not in _tc(lab.node_ns(0), "qdisc", lab.node_if(0))
        assert json.loads((lab.workdir / "manifest.json").read_text()
                          )["nodes"]["0"]["down-mbps"] == 4.0
        # ... and with the node config too: SuperNode 0 restarted, rejoined
        old = [p for p in lab.processes() if p["name"] == "supernode-0"]
        lab.shape(0, 3, 1, restart_node=True)
        assert "link-down-mbps=3 link-up-mbps=1 link-latency-ms=0" in lab.node_config(0)
        assert "rate 1Mbit ceil 1Mbit" in _tc(lab.node_ns(0), "class", lab.node_if(0))
        assert _alive(old) == []
        nodes = json.loads(lab.flwr_cli("supernode", "list", "linklab", "--format", "json"
                                        ).stdout)["nodes"]
        assert sum(n["status"] == "online" for n in nodes) == 2, nodes
        print(f"SuperNode 0 restarted in {lab.timings['restart_node_0_s']:.1f} s")
        procs = lab.processes()
        names = {p["name"] for p in procs}
        assert {"superlink", "supernode-0", "supernode-1"} <= names
        assert len(_alive(procs)) == len(procs)
    print(f"lab stopped in {lab.timings['stop_s']:.1f} s")
    assert lab.leftovers() == []
    assert _alive(procs) == []
    assert not netns_list() & {lab.superlink_ns, lab.node_ns(0), lab.node_ns(1)}
    assert json.loads((lab.workdir / "linklab.json").read_text())["stopped"] is True


class _Cli:
    """`python -m tools.deploy.linklab start` as a subprocess, its output collected by a thread."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.deploy.linklab", "start", "--links", "2:1", "--dir",
             str(workdir)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                                       daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while "Ctrl-C here" not in self.output:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Whatever happened: no CLI and no lab of it left (`stop` reads the record)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if (self.workdir / "linklab.json").exists():
            subprocess.run([sys.executable, "-m", "tools.deploy.linklab", "stop", "--dir",
                            str(self.workdir)], cwd=ROOT, capture_output=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})


@needs_root
def test_cli_sigint_tears_down(tmp_path):
    """`python -m tools.deploy.linklab start` in the foreground: SIGINT -> everything goes,
    exit 0."""
    cli = _Cli(tmp_path / "cli")
    try:
        cli.wait_up()
        record = json.loads((cli.workdir / "linklab.json").read_text())
        assert "flwr run" in cli.output
        assert f"FLWR_HOME={cli.workdir}/flwr-home" in cli.output
        assert set(record["namespaces"]) <= netns_list()
        assert len(_alive(record["processes"])) == len(record["processes"]) >= 3
        cli.proc.send_signal(signal.SIGINT)
        cli.proc.wait(timeout=60)
        cli.reader.join(timeout=5)
        assert cli.proc.returncode == 0, cli.output
        assert "leftovers: none" in cli.output, cli.output
        assert _alive(record["processes"]) == []
        assert not set(record["namespaces"]) & netns_list()
        assert json.loads((cli.workdir / "linklab.json").read_text())["stopped"] is True
    finally:
        cli.cleanup()


@needs_root
def test_stop_cleans_up_after_a_crash(tmp_path):
    """The CLI killed with SIGKILL leaves its lab; `stop --dir` removes exactly it."""
    cli = _Cli(tmp_path / "crash")
    try:
        cli.wait_up()
        cli.proc.kill()
        cli.proc.wait()
        record = json.loads((cli.workdir / "linklab.json").read_text())
        assert set(record["namespaces"]) <= netns_list()  # left behind by the crash
        assert _alive(record["processes"])
        stop = subprocess.run([sys.executable, "-m", "tools.deploy.linklab", "stop", "--dir",
                               str(cli.workdir)], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert _alive(record["processes"]) == []
        assert not set(record["namespaces"]) & netns_list()
    finally:
        cli.cleanup()


def test_refuses_without_root(tmp_path):
    """Not root: it stops at once and says why."""
    if os.geteuid() != 0:
        with pytest.raises(LinkLabError, match="needs root"):
            check_privileges()
        return
    setpriv = subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0
    if not setpriv:
        pytest.skip("setpriv (util-linux) not installed: cannot drop root for this check")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "tools.deploy.linklab", "start", "--links", "1",
                           "--dir", str(tmp_path / "x")], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert "needs root" in proc.stderr, proc.stderr
