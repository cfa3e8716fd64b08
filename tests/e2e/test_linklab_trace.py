"""The link lab plays a trace and adds latency, on real kernel links (no mocks; about 25 s).

Node 0 behind a veth shaped by a two-step trace (16 then 4 Mbit/s down) and a delay relay
(node 1 unshaped, no relay): a bulk download that straddles the change takes the time the
trace says (the replay's own integration over the trace as the lab applied it, within
15 %); the relay adds
two latencies to a request and its response to the SuperLink, follows a latency change,
and the SuperNode keeps running through it all; nothing of the lab is left behind.

Needs root and iproute2 (`ip netns`, `tc`); skipped otherwise, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from fedvit.wire.links import FRAME_FACTOR
from tests.labs import needs_root
from tools.deploy.linklab import LinkLab
from tools.deploy.linklab.netns import LinkLabError
from tools.deploy.linklab.supervise import RELAY_PORT, SUPERLINK_PORT
from tools.deploy.processes import alive
from tools.replay.traces import read_trace

FAST, SLOW, CHANGE_S = 16.0, 4.0, 1.5
NBYTES = 4_000_000  # ~1.2 s at 16 Mbit/s before the change, the rest (~3.5 s) at 4
LATENCY_MS = 100.0
TRACE = f"""# two steps: {FAST:g} Mbit/s down, {SLOW:g} from {CHANGE_S:g} s; latency on the relay
partition,t-s,down-mbps,up-mbps,latency-ms
0,0,{FAST:g},{FAST:g},0
0,{CHANGE_S:g},{SLOW:g},{FAST:g},{LATENCY_MS:g}
*,0,10000,10000,0
"""

# `send PORT NBYTES` (in the SuperLink namespace) or `recv ADDR PORT` (in the node's):
# the receiver prints the wall-clock time of its first and last byte, and the bytes.
TRANSFER = textwrap.dedent("""
    import json, socket, sys, time
    if sys.argv[1] == "send":
        srv = socket.create_server(("0.0.0.0", int(sys.argv[2])))
        print("ready", flush=True)
        sock, _ = srv.accept()
        sock.sendall(b"x" * int(sys.argv[3]))
        sock.close()
    else:
        sock = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30)
        got, first = 0, None
        while chunk := sock.recv(1 << 16):
            first = first or time.time()
            got += len(chunk)
        print(json.dumps({"first": first, "last": time.time(), "bytes": got}))
""")

# Seconds of the fastest of 5 requests to the SuperLink's /health from the node's namespace.
HEALTH = textwrap.dedent("""
    import sys, time, urllib.request
    seconds = []
    for _ in range(5):
        t0 = time.monotonic()
        urllib.request.urlopen(sys.argv[1], timeout=10).read()
        seconds.append(time.monotonic() - t0)
    print(min(seconds))
""")


def _download(lab: LinkLab, nbytes: int) -> dict:
    sender = subprocess.Popen(lab.netns_exec(None) + [sys.executable, "-c", TRANSFER, "send",
                                                      "5201", str(nbytes)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "ready"
        recv = subprocess.run(lab.netns_exec(0) + [sys.executable, "-c", TRANSFER, "recv",
                                                   "10.213.0.1", "5201"],
                              capture_output=True, text=True, timeout=60)
        assert recv.returncode == 0, recv.stderr
    finally:
        sender.wait(timeout=30)
    return json.loads(recv.stdout)


def _health_s(lab: LinkLab, address: str) -> float:
    out = subprocess.run(lab.netns_exec(0) + [sys.executable, "-c", HEALTH,
                                              f"http://{address}/health"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@needs_root
def test_a_trace_and_latency_on_real_links(tmp_path):
    (tmp_path / "trace.csv").write_text(TRACE)
    trace = read_trace(tmp_path / "trace.csv")
    (tmp_path / "latency-for-all.csv").write_text(TRACE.replace("*,0,10000,10000,0",
                                                                 "*,0,10000,10000,5"))
    lab = LinkLab([(FAST, FAST), None], tmp_path / "lab", latency_ms=[0, None])
    with lab:
        # node 1 has no relay: a trace giving it a latency is refused before any change
        with pytest.raises(LinkLabError, match="node 1 .* no delay relay"):
            lab.play_trace(read_trace(tmp_path / "latency-for-all.csv"))
        with pytest.raises(LinkLabError, match="no delay relay"):
            lab.set_latency(1, 10)
        assert lab.player is None

        supernode = [p for p in lab.processes() if p["name"] == "supernode-0"]
        assert "link-latency-ms=0 " in lab.node_config(0)
        relayed_0 = _health_s(lab, f"127.0.0.1:{RELAY_PORT}")
        direct = _health_s(lab, f"10.213.0.1:{SUPERLINK_PORT}")

        player = lab.play_trace(trace)
        got = _download(lab, NBYTES)
        player.stop()
        # the change fell inside the transfer, and the transfer took what the trace says
        (_, change) = [a for a in player.applied if a["partition"] == 0]
        assert got["bytes"] == NBYTES
        assert got["first"] < change["applied-wall"] < got["last"]
        assert (change["down-mbps"], change["latency-ms"]) == (SLOW, LATENCY_MS)
        applied = read_trace(lab.write_applied_trace(tmp_path / "applied.csv", got["first"]))
        expected = applied.curve(0).carry_s(0.0, NBYTES * FRAME_FACTOR, "down_mbps")
        measured = got["last"] - got["first"]
        print(f"\ntransfer across the change: measured {measured:.2f} s, the trace as "
              f"applied says {expected:.2f} s")
        assert 0.85 <= measured / expected <= 1.15
        saved = json.loads((lab.workdir / "trace-applied.json").read_text())
        assert saved["changes"] == player.applied and saved["t0"] == player.t0

        # the relay: a request and its response now pay two latencies; then fewer
        relayed_100 = _health_s(lab, f"127.0.0.1:{RELAY_PORT}")
        lab.set_latency(0, LATENCY_MS / 4)
        relayed_25 = _health_s(lab, f"127.0.0.1:{RELAY_PORT}")
        print(f"/health: direct {direct:.3f} s, relayed at 0 / {LATENCY_MS / 4:g} / "
              f"{LATENCY_MS:g} ms: {relayed_0:.3f} / {relayed_25:.3f} / {relayed_100:.3f} s")
        assert relayed_100 >= 2 * LATENCY_MS / 1e3
        assert 2 * LATENCY_MS / 4e3 <= relayed_25 < relayed_100
        assert relayed_0 < 2 * LATENCY_MS / 4e3
        # no SuperNode restart: the node config keeps what it started with
        assert all(alive(p) for p in supernode)
        assert "link-latency-ms=0 " in lab.node_config(0)
        assert "relay-0" in {p["name"] for p in lab.processes()}
    assert lab.leftovers() == []



def test_bad_latencies_are_refused():
    with pytest.raises(LinkLabError, match="latency must be >= 0"):
        LinkLab([(FAST, FAST)], "/nonexistent", latency_ms=-1)
    with pytest.raises(LinkLabError, match="one per node"):
        LinkLab([(FAST, FAST)], "/nonexistent", latency_ms=[1, 2])
