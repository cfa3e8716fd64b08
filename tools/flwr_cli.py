"""``scripts/flwr``: Flower's ``flwr`` with the checks it can make before handing over,
and the run's own outcome at the end.

* Before ``run``, ``stop``, ``ls``/``list`` and ``log``: the SuperLink connection named (or
  the default) is read from ``$FLWR_HOME/config.toml`` and, where it is a deployment
  address, probed: nothing listening, a SuperLink that serves TLS to an ``insecure``
  connection, or plain HTTP to a TLS one, is said in those words (Flower 1.41 answers all
  three with "Connection to the SuperLink is unavailable").
* ``run ... --stream``: the log is passed through; at the end the run's ``summary.json``
  (the ServerApp logs its folder) is reported in one line, and the exit status is 0 only
  for a complete run. Ctrl-C stops the run (``flwr stop``), as docs/results.md says, instead of
  only detaching the log as ``flwr run --stream`` does; its folder keeps the rounds it
  completed, and the line tells how to resume.

Everything else goes to ``flwr`` unchanged.
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
import tomllib
from pathlib import Path

from fedvit.keys import SUMMARY_FILE

APP_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_HOME = APP_ROOT / ".flwr" / "deployment" / "flwr-home"  # deploy.sh's default
# flwr options that take a value (so the value is not a positional argument)
VALUED = {"--run-config", "-c", "--federation-config", "--format", "--superlink"}
RUN_ID = re.compile(r"Successfully started run (\d+)")
RESULTS = re.compile(r"fedvit: .*results in (/\S+)")
PROBE_S = 3.0


def positionals(args: list[str]) -> list[str]:
    """The positional arguments of a ``flwr`` subcommand's arguments."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUED:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def connection_name(command: str, args: list[str], config: dict) -> str | None:
    """The SuperLink connection a command uses: the one named, else the default."""
    pos = positionals(args)
    index = {"run": 1, "stop": 1, "log": 1, "ls": 0, "list": 0}.get(command)
    if index is None:
        return None
    return pos[index] if len(pos) > index else config.get("default")


def probe(address: str) -> str:
    """What listens at ``host:port``: ``'none'``, ``'tls'`` or ``'plain'``."""
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                        timeout=PROBE_S)
    except (OSError, ValueError):
        return "none"
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with context.wrap_socket(sock, server_hostname=host or None) as tls:
            tls.do_handshake()
        return "tls"
    except (ssl.SSLError, OSError):
        return "plain"
    finally:
        sock.close()


def connection_problem(home: Path, command: str, args: list[str]) -> str | None:
    """Why the command's SuperLink connection cannot work, in words; None if it may.

    Args:
        home: ``$FLWR_HOME`` (its ``config.toml`` holds the connections).
        command: the ``flwr`` subcommand.
        args: its arguments.
    """
    path = home / "config.toml"
    try:
        config = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None  # flwr says what is wrong with it
    name = connection_name(command, args, config)
    conn = config.get(name) if name else None
    if not isinstance(conn, dict) or str(conn.get("address", ":local:")).startswith(":"):
        return None  # unknown (flwr lists the known ones) or a managed local SuperLink
    address, insecure = str(conn["address"]), bool(conn.get("insecure", False))
    where = f"connection '{name}' in {path}"
    served = probe(address)
    if served == "none":
        return (f"nothing answers at {address} ({where}): start the deployment "
                "(tools/deploy/deploy.sh start) or check its address")
    if served == "tls" and insecure:
        hint = (f"use the connection the deployment wrote: FLWR_HOME={DEPLOY_HOME} "
                f"scripts/flwr {command} ..." if (DEPLOY_HOME / "config.toml").is_file()
                and DEPLOY_HOME != home else
                "set root-certificates = '<the deployment's ca.crt>' instead of insecure")
        return (f"the SuperLink at {address} serves TLS (a deployment started with --tls), "
                f"but {where} has insecure = true; {hint}")
    if served == "plain" and not insecure:
        return (f"the SuperLink at {address} serves plain HTTP (started without --tls), "
                f"but {where} expects TLS; set insecure = true or start the deployment "
                "with --tls")
    certs = conn.get("root-certificates")
    if served == "tls" and certs and not Path(str(certs)).expanduser().is_file():
        return f"{where} names root-certificates = '{certs}', which does not exist"
    return None


def outcome(lines: list[str]) -> tuple[str | None, Path | None]:
    """The run id and the run folder a streamed log names."""
    run_id = next((m.group(1) for line in lines if (m := RUN_ID.search(line))), None)
    folders = [Path(m.group(1).rstrip(";,")) for line in lines if (m := RESULTS.search(line))]
    return run_id, folders[-1] if folders else None


def report(run_id: str | None, folder: Path | None, stopped: bool) -> int:
    """Say how the run ended (its ``summary.json``); 0 only for a complete run."""
    summary_path = folder / SUMMARY_FILE if folder else None
    if summary_path is None or not summary_path.is_file():
        print(f"scripts/flwr: run {run_id or '?'} wrote no summary (it failed before its "
              "run folder existed, or is still running): see the log above", file=sys.stderr)
        return 1
    s = json.loads(summary_path.read_text())
    line = (f"scripts/flwr: run {run_id or '?'} {s['status']} after rounds "
            f"{s['completed-rounds']}")
    if s.get("stop-reason"):
        line += f": {s['stop-reason']}"
    line += f"; summary in {summary_path}"
    if stopped or s["status"] == "interrupted":
        line += (f"; resume with --run-config \"resume-from='{folder}' "
                 f"num-server-rounds=<total>\"")
    print(line, file=sys.stderr if s["status"] != "complete" else sys.stdout)
    return 0 if s["status"] == "complete" else 1


def run_streamed(flwr: str, args: list[str]) -> int:
    """``flwr run ... --stream``, passed through; then the run's outcome (``report``).
    Ctrl-C stops the run with ``flwr stop`` and waits (up to a minute) for its summary."""
    proc = subprocess.Popen([flwr, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # Ctrl-C reaches us only
    lines: list[str] = []
    stopped = False
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        proc.wait()
    except KeyboardInterrupt:
        stopped = True
        run_id, folder = outcome(lines)
        conn = positionals(args[1:])[1:2]  # args[0] is 'run'
        print(f"\nscripts/flwr: Ctrl-C: stopping run {run_id} (flwr stop {run_id}); its "
              "folder keeps the rounds it completed", file=sys.stderr)
        if run_id:
            stop = subprocess.run([flwr, "stop", run_id, *conn], check=False, text=True,
                                  capture_output=True)
            sys.stderr.write(stop.stdout + stop.stderr)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        summary = folder / SUMMARY_FILE if folder else None
        for _ in range(120):  # the run learns of the stop at its next heartbeat
            if summary is None or summary.is_file():
                break
            time.sleep(0.5)
    run_id, folder = outcome(lines)
    if run_id is None:
        return proc.returncode or 1  # flwr refused before starting a run: its words stand
    return report(run_id, folder, stopped)


def main(argv: list[str] | None = None) -> int:
    """Check, then hand over to ``flwr`` (the project's venv's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    flwr = str(Path(sys.executable).parent / "flwr")
    home = Path(os.environ.get("FLWR_HOME", APP_ROOT / ".flwr"))
    command = args[0] if args else ""
    problem = connection_problem(home, command, args[1:])
    if problem:
        print(f"scripts/flwr: error: {problem}", file=sys.stderr)
        return 2
    if command == "run" and "--stream" in args:
        return run_streamed(flwr, args)
    os.execv(flwr, [flwr, *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
