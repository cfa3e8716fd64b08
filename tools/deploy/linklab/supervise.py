"""The link lab's Flower processes: started inside their namespaces, each in a session of
its own with its output in ``logs/<name>.log`` and recorded (``record``); waited for until
they serve; a SuperNode stopped for a restart."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedvit.files import write_json
from tools.deploy.linklab import relay
from tools.deploy.linklab.netns import LinkLabError
from tools.deploy.linklab.network import LabNames
from tools.deploy.linklab.record import LabRecord
from tools.deploy.linklab.runs import log_tail
from tools.deploy.processes import alive, descendants, terminate

SUPERLINK_PORT = 8000  # inside the SuperLink namespace: no other lab can collide with it
SUPERNODE_PORT = 9100  # inside each node namespace
RELAY_PORT = 8001  # a node's delay relay, on 127.0.0.1 inside its namespace
JOINED = b"SuperNode ID:"  # a SuperNode's log line once the SuperLink accepted it


@dataclass(frozen=True)
class Supervisor:
    """Starts and stops one lab's SuperLink and SuperNodes."""

    names: LabNames
    bin_dir: Path
    workdir: Path
    record: LabRecord
    start_timeout_s: float
    stop_timeout_s: float

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def launch(self, name: str, node: int | None, argv: list[str], env: Mapping[str, str]
               ) -> subprocess.Popen:
        """Start ``argv`` in node ``node``'s namespace (None: the SuperLink's), in its own
        session, output appended to logs/<name>.log, with a Flower home of its own.
        ``ip netns exec`` execs the command, so the PID is the command's own.

        Raises:
            LinkLabError: it exited at once.
        """
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.names.netns_exec(node) + argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                    env={**env, "FLWR_HOME": str(home)},
                                    start_new_session=True)
        if self.record.add_popen(proc, name) is None:
            raise LinkLabError(f"{name} exited at once:\n{log_tail(self.logs, name)}")
        return proc

    def _superlink_answers(self) -> bool:
        probe = (f"import urllib.request; urllib.request.urlopen("
                 f"'http://127.0.0.1:{SUPERLINK_PORT}/health', timeout=2)")
        try:
            return subprocess.run(self.names.netns_exec(None) + [sys.executable, "-c", probe],
                                  capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start_superlink(self, env: Mapping[str, str], deadline: float) -> None:
        """Start ``flower-superlink`` and wait until it answers on its health endpoint.

        Raises:
            LinkLabError: it exited, or did not answer by ``deadline`` (``time.monotonic``).
        """
        superlink = self.launch("superlink", None, [
            str(self.bin_dir / "flower-superlink"), "--insecure", "--host", "0.0.0.0",
            "--port", str(SUPERLINK_PORT), "--disable-runtime-dependency-installation"], env)
        while not self._superlink_answers():
            if superlink.poll() is not None:
                raise LinkLabError(f"flower-superlink exited ({superlink.returncode}) during "
                                   f"start-up:\n{log_tail(self.logs, 'superlink')}")
            if time.monotonic() > deadline:
                raise LinkLabError(f"flower-superlink did not answer within "
                                   f"{self.start_timeout_s:.0f} s:\n"
                                   f"{log_tail(self.logs, 'superlink')}")
            time.sleep(0.3)

    def relay_control(self, i: int) -> Path:
        """The file node ``i``'s relay re-reads on SIGUSR1 (``relay.Delay``)."""
        return self.workdir / f"relay-{i}.json"

    def start_relay(self, i: int, latency_ms: float, env: Mapping[str, str],
                    deadline: float) -> subprocess.Popen:
        """Start node ``i``'s delay relay (``relay``: 127.0.0.1:RELAY_PORT in the node's
        namespace -> the SuperLink over the node's veth, ``latency_ms`` each way) and wait
        until it listens.

        Raises:
            LinkLabError: it exited, or did not listen by ``deadline`` (``time.monotonic``).
        """
        name = f"relay-{i}"
        write_json(self.relay_control(i), {"latency-ms": latency_ms})
        proc = self.launch(name, i, [
            sys.executable, relay.__file__, "--listen", f"127.0.0.1:{RELAY_PORT}",
            "--to", f"{self.names.superlink_address(i)}:{SUPERLINK_PORT}",
            "--latency-ms", f"{latency_ms:g}", "--control", str(self.relay_control(i))], env)
        while relay.READY not in (self.logs / f"{name}.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LinkLabError(f"{name} did not start ({proc.poll()}):\n"
                                   f"{log_tail(self.logs, name)}")
            time.sleep(0.05)
        return proc

    def start_node(self, i: int, node_config: str, env: Mapping[str, str], *,
                   relayed: bool = False) -> tuple[subprocess.Popen, int]:
        """Start SuperNode ``i`` with ``node_config`` (``relayed``: through its delay relay);
        returns the process and where its output starts in its log (for ``wait_joined``)."""
        log = self.logs / f"supernode-{i}.log"
        offset = log.stat().st_size if log.exists() else 0
        superlink = (f"127.0.0.1:{RELAY_PORT}" if relayed
                     else f"{self.names.superlink_address(i)}:{SUPERLINK_PORT}")
        proc = self.launch(f"supernode-{i}", i, [
            str(self.bin_dir / "flower-supernode"), "--insecure", "--superlink", superlink,
            "--port", str(SUPERNODE_PORT), "--node-config", node_config], env)
        return proc, offset

    def wait_joined(self, i: int, node: subprocess.Popen, offset: int, deadline: float
                    ) -> None:
        """Until SuperNode ``i`` logs "SuperNode ID: ..." (the SuperLink accepted it).

        Raises:
            LinkLabError: it exited, or had not joined by ``deadline`` (``time.monotonic``).
        """
        name = f"supernode-{i}"
        while True:
            with open(self.logs / f"{name}.log", "rb") as f:
                f.seek(offset)
                if JOINED in f.read():
                    return
            if node.poll() is not None:
                raise LinkLabError(f"{name} exited ({node.returncode}):\n"
                                   f"{log_tail(self.logs, name)}")
            if time.monotonic() > deadline:
                raise LinkLabError(f"{name} did not join within {self.start_timeout_s:.0f} s:"
                                   f"\n{log_tail(self.logs, name)}")
            time.sleep(0.2)

    def stop_node(self, i: int) -> None:
        """Stop SuperNode ``i`` and its descendants and take them off the record.

        Raises:
            LinkLabError: a process of it survived SIGKILL.
        """
        name = f"supernode-{i}"
        old = [p for p in self.record.processes if p["name"] == name]
        old_ids = {(p["pid"], p["start"]) for p in old}
        old_ids |= {(c["pid"], c["start"]) for p in old if alive(p)
                    for c in descendants(int(p["pid"]))}
        left = terminate(old, self.stop_timeout_s)
        if left:
            raise LinkLabError(f"{name} survived SIGKILL: {left}")
        self.record.forget(old_ids)  # gone: off the record (the CLI watches the live nodes)
