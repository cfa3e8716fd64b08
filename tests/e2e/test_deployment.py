"""A real deployment: tools/deploy/deploy.sh starts a SuperLink and 2 SuperNodes as processes on
127.0.0.1 with TLS and SuperNode authentication; `flwr run` runs 2 rounds of each strategy
against it; the books are checked, and compared with the SuperLink's own traffic count.

Slow (minutes: every round starts a fresh ClientApp process per node, which imports torch).
Everything started here is stopped in the fixture's teardown and checked to be gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fedvit.config.appconfig import APP_ROOT
from tools.deploy.processes import descendants, start_time

VENV_BIN = Path(sys.executable).parent
FLWR = VENV_BIN / "flwr"
SUPERLINK = VENV_BIN / "flower-superlink"
SUPERNODE = VENV_BIN / "flower-supernode"
DEPLOY = APP_ROOT / "tools" / "deploy" / "deploy.sh"
CONNECTION = "local-deployment"
RUN_CONFIG = "num-server-rounds=2 weights-path='' local-epochs=1"
STRATEGIES = ("fedavg", "fedlora")

pytestmark = pytest.mark.skipif(
    not (SUPERLINK.exists() and SUPERNODE.exists()),
    reason=f"flower-superlink/flower-supernode not installed in {VENV_BIN} "
    "(the flwr[simulation] extra provides them; run scripts/setup.sh)",
)

# Filled by the strategy tests, read by the comparison test and printed at the end.
MEASURED: dict[str, dict] = {}


# ---------------------------------------------------------------------------------------------
# processes


def _descendants(pids: set[int]) -> set[int]:
    """The live descendants of ``pids`` (``tools.deploy.processes``: the one process-tree
    walk)."""
    return {child["pid"] for pid in pids for child in descendants(pid)}


def _recorded(pids_file: Path) -> dict[int, str]:
    """PID -> start time of the live processes deploy.sh recorded, and their descendants."""
    if not pids_file.is_file():
        return {}
    rec = {int(p): st for p, st, *_ in (line.split() for line in pids_file.read_text().splitlines()
                                        if line.strip())}
    alive = {p for p, st in rec.items() if start_time(p) == st}
    return {p: start_time(p) for p in alive | _descendants(alive) if start_time(p)}


def _gone(procs: dict[int, str], timeout_s: float = 20.0) -> list[int]:
    """The processes of ``procs`` still alive after waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p, st in procs.items() if start_time(p) == st]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# the deployment


class Deployment:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.dir = root / "deployment"
        self.home = self.dir / "flwr-home"
        self.ca = self.dir / "certs" / "ca.crt"
        self.env = {
            **os.environ,
            "FLWR_BIN": str(VENV_BIN),
            "FLWR_HOME": str(self.home),
            "FEDVIT_CACHE": str(root / "cache"),
            "OMP_NUM_THREADS": "1",  # 2 cores: 2 ClientApps and a ServerApp side by side
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        }

    def deploy(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([str(DEPLOY), *args, "--dir", str(self.dir)], env=self.env,
                              cwd=APP_ROOT, text=True, capture_output=True, timeout=timeout)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(FLWR), *args], env=self.env, cwd=APP_ROOT, text=True,
                              capture_output=True, timeout=timeout)

    def flwr_json(self, *args: str) -> dict:
        proc = self.flwr(*args, CONNECTION, "--format", "json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def online_nodes(self) -> set[int]:
        nodes = self.flwr_json("supernode", "list")["nodes"]
        return {int(n["node-id"]) for n in nodes if n["status"] == "online"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """SuperLink + 2 SuperNodes with TLS and SuperNode auth, stopped whatever happens."""
    port = 8000 if _port_free(8000) else _free_port()
    node_ports = next(b for b in range(9100, 9900, 2) if _port_free(b) and _port_free(b + 1))
    dep = Deployment(tmp_path_factory.mktemp("deploy"), port)
    dep.env["SUPERNODE_PORT_BASE"] = str(node_ports)
    t0 = time.monotonic()
    procs: dict[int, str] = {}
    try:
        started = dep.deploy("start", "--nodes", "2", "--tls", "--auth", "--port", str(port))
        procs = _recorded(dep.dir / "pids")
        assert started.returncode == 0, started.stdout + started.stderr
        print(f"\ndeploy.sh start took {time.monotonic() - t0:.1f} s")
        yield dep
    finally:
        procs |= _recorded(dep.dir / "pids")  # children spawned since, e.g. ServerApps
        stopped = dep.deploy("stop", timeout=90)
        left = _gone(procs)
        for pid in left:  # should not happen; never leave processes behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _print_measurements()
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not left, f"processes survived deploy.sh stop: {left}"
        assert not (dep.dir / "pids").exists()


# ---------------------------------------------------------------------------------------------
# tests (module order: security first, then the runs, then the comparison)


def test_tls_and_registered_nodes(deployment):
    """HTTPS only, verified with the generated CA; exactly the 2 registered nodes online."""
    import httpx

    trusted = ssl.create_default_context(cafile=str(deployment.ca))
    ok = httpx.get(f"https://127.0.0.1:{deployment.port}/health", verify=trusted)
    assert ok.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{deployment.port}/health", timeout=5)
    with pytest.raises(httpx.HTTPError):  # a CA the client does not know
        httpx.get(f"https://127.0.0.1:{deployment.port}/health", timeout=5)
    assert len(deployment.online_nodes()) == 2
    config = (deployment.home / "config.toml").read_text()
    assert f'address = "127.0.0.1:{deployment.port}"' in config
    assert f'root-certificates = "{deployment.ca}"' in config
    assert "insecure" not in config


@pytest.mark.parametrize("key", ["unregistered-key", "no-key"])
def test_unauthenticated_supernode_is_refused(deployment, key):
    """A third SuperNode, with a key the SuperLink does not know or with none, is refused."""
    rogue = deployment.root / f"rogue-{key}"
    rogue.mkdir()
    args = [str(SUPERNODE), "--superlink", f"127.0.0.1:{deployment.port}",
            "--root-certificates", str(deployment.ca), "--port", str(_free_port()),
            "--node-config", "partition-id=0 num-partitions=2", "--max-retries", "3"]
    if key == "unregistered-key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                        str(rogue / "key")], check=True)
        args += ["--auth-supernode-private-key", str(rogue / "key")]
    before = deployment.online_nodes()
    log = rogue / "supernode.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=rogue,
                                env={**deployment.env, "FLWR_HOME": str(rogue)},
                                start_new_session=True)
    try:
        returncode = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        procs = {proc.pid: start_time(proc.pid)} if start_time(proc.pid) else {}
        procs |= {p: start_time(p) for p in _descendants({proc.pid}) if start_time(p)}
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        assert not _gone(procs, 20)
    text = log.read_text()
    assert returncode not in (None, 0), f"the rogue SuperNode was not refused:\n{text[-2000:]}"
    assert "Failed to initialize the connection to the SuperLink" in text, text[-2000:]
    refusal = ("Failed to activate SuperNode" if key == "unregistered-key"
               else "All SuperNodes must be registered")
    assert refusal in text, text[-2000:]
    assert "SuperNode ID:" not in text
    assert deployment.online_nodes() == before and len(before) == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_rounds_per_strategy(deployment, strategy):
    """`flwr run` against the deployment: results written, books complete and consistent."""
    out = deployment.root / f"outputs-{strategy}"
    nodes = deployment.online_nodes()
    t0 = time.monotonic()
    proc = deployment.flwr(
        "run", ".", CONNECTION, "--stream", "--run-config",
        f"{RUN_CONFIG} strategy='{strategy}' outputs-dir='{out}'", timeout=1200)
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    match = re.search(r"Successfully started run (\d+)", log)
    assert match, log[-4000:]
    run_id = int(match.group(1))
    assert "fedvit: round 2/2 | central acc" in log, log[-4000:]

    runs = list(out.iterdir())
    assert len(runs) == 1 and runs[0].name.endswith(f"-{strategy}"), runs
    summary = json.loads((runs[0] / "summary.json").read_text())
    books = json.loads((runs[0] / "books.json").read_text())
    assert summary["strategy"] == strategy
    assert summary["rounds"] == 2
    assert summary["books-mismatches"] == []
    assert summary["estimate-matches-tensor-bytes"] is True
    assert summary["estimate"]["num-nodes"] == 2  # the refused SuperNodes never counted
    for rnd in (1, 2):
        rows = [r for r in books if r["round"] == rnd and r["phase"] == "train"]
        per_direction = Counter(r["direction"] for r in rows)
        assert per_direction == {"down": 2, "up": 2}, rows
        assert all(r["status"] == "ok" for r in rows), rows
        assert {r["node-id"] for r in rows} == nodes  # the two authenticated SuperNodes
    assert not [r for r in books if r["phase"] != "train"]  # fraction-evaluate = 0

    run = deployment.flwr_json("list", "--run-id", str(run_id))["runs"]
    assert len(run) == 1 and run[0]["status"] == "finished:completed", run
    MEASURED[strategy] = {"run-id": run_id, "flwr-run-s": wall, "books": summary["bytes"],
                          "superlink": run[0]["network-traffic"],
                          "config": json.loads((runs[0] / "config.json").read_text())}


def test_books_against_superlink_traffic(deployment):
    """The SuperLink's own per-run Fleet traffic count against the books' message bytes.

    What the SuperLink counts per run (flwr/superlink/servicer/fleet/fleet_handlers.py): the
    content of every object a SuperNode pulls (outbound) or pushes (inbound), i.e. the same
    deflated objects the books add up, plus the protobuf bodies of the PullMessages and
    PushMessages calls that carry a message (message metadata and the object tree, about
    70 bytes of ids per object, and the list of objects still to push). Not counted: HTTP and
    TLS framing, heartbeats, GetRun/GetFab. Objects are content-addressed, so an object
    occurring several times in one message crosses once, while the books count every
    occurrence: identical arrays (zero-initialised LoRA B matrices, LayerNorm ones and zeros,
    zero biases) make round 1's downlink cheaper than the books say. So:
    outbound = down-msg - duplicates + control bodies, inbound = up-msg + control bodies
    (the trained replies hold no duplicates here).
    """
    missing = [s for s in STRATEGIES if s not in MEASURED]
    if missing:
        pytest.skip(f"runs did not complete for {missing}")
    for strategy in STRATEGIES:
        m = MEASURED[strategy]
        b, link = m["books"], m["superlink"]
        books_msg = b["down-msg"] + b["up-msg"]
        books_tensor = b["down-tensor"] + b["up-tensor"]
        assert books_msg > books_tensor > 0
        assert link["total-bytes"] == link["inbound-bytes"] + link["outbound-bytes"] > 0
        duplicates = 2 * _initial_duplicate_bytes(m["config"])  # round 1, 2 nodes
        m["round-1-duplicates"] = duplicates
        out, inb = link["outbound-bytes"], link["inbound-bytes"]
        # downlink: the books less round 1's duplicates (2 % slack for later rounds'), plus
        # at most a few percent of control bodies
        assert 0.98 * b["down-msg"] - duplicates <= out <= 1.05 * b["down-msg"] + 64_000, m
        # uplink: every byte of the replies crosses, plus the control bodies
        assert b["up-msg"] <= inb <= 1.05 * b["up-msg"] + 64_000, m
        assert books_tensor * 0.5 <= link["total-bytes"] <= books_msg * 1.1, m


def _initial_duplicate_bytes(run_config: dict) -> int:
    """Bytes of the objects that occur more than once in the initial global arrays of the
    run (its config.json), in the layout they travelled in: identical arrays and their
    chunks, which the books count each time and a SuperNode pulls once (packed: none but
    identical 5 MiB chunks of the one buffer)."""
    from flwr.app import Array, ArrayRecord

    from fedvit.config.appconfig import AppConfig
    from fedvit.data.loaders import dataset_columns
    from fedvit.model.build import build_model
    from fedvit.model.tensors import exchanged_state
    from fedvit.wire.packing import pack_record

    cfg = AppConfig.from_run_config(run_config)
    record = ArrayRecord(exchanged_state(build_model(cfg, dataset_columns(cfg).num_classes)))
    record = pack_record(record) if cfg.pack_tensors else record
    seen: set[str] = set()
    duplicates = 0
    for array in record.values():
        assert isinstance(array, Array)
        for obj in (array, *(chunk for _, chunk in array.slice_array())):
            if obj.object_id in seen:
                duplicates += len(obj.deflate())
            seen.add(obj.object_id)
    return duplicates


def _print_measurements() -> None:
    if not MEASURED:
        return
    print("\nbooks vs SuperLink traffic (bytes):")
    for strategy, m in MEASURED.items():
        b, link = m["books"], m["superlink"]
        msg, tensor = b["down-msg"] + b["up-msg"], b["down-tensor"] + b["up-tensor"]
        print(f"  {strategy}: run {m['run-id']} ({m['flwr-run-s']:.0f} s) | books tensor "
              f"{tensor:,} (down {b['down-tensor']:,} up {b['up-tensor']:,}) msg {msg:,} "
              f"(down {b['down-msg']:,} up {b['up-msg']:,}) | SuperLink total "
              f"{link['total-bytes']:,} (out {link['outbound-bytes']:,} in "
              f"{link['inbound-bytes']:,}) = {link['total-bytes'] / msg:.4f} x msg, "
              f"{link['total-bytes'] / tensor:.4f} x tensor; round-1 duplicates "
              f"{m.get('round-1-duplicates', 'n/a')}")
    sys.stdout.flush()

