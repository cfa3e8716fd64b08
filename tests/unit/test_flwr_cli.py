"""The user's own commands tell what happened: ``scripts/flwr`` checks
the SuperLink connection before handing over to Flower (which answers a TLS mismatch with
"Connection to the SuperLink is unavailable"), and reports the run's own outcome."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from tools.flwr_cli import APP_ROOT, connection_problem, outcome, positionals, report

FLWR = APP_ROOT / "scripts" / "flwr"


@pytest.fixture
def server(tmp_path):
    """Start an HTTP server on a free loopback port, with TLS or without."""
    started = []

    def start(tls: bool) -> int:
        httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        if tls:
            if shutil.which("openssl") is None:
                pytest.skip("openssl is needed for a TLS server")
            key, cert = tmp_path / "server.key", tmp_path / "server.crt"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(key), "-out", str(cert), "-days", "1",
                            "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return httpd.server_address[1]

    yield start
    for httpd in started:
        httpd.shutdown()


def _home(tmp_path: Path, port: int, tls_connection: bool) -> Path:
    home = tmp_path / "flwr-home"
    home.mkdir(exist_ok=True)
    security = (f"root-certificates = '{tmp_path / 'server.crt'}'" if tls_connection
                else "insecure = true")
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{port}"\n{security}\n')
    return home


def test_run_against_a_tls_superlink_with_an_insecure_connection_says_tls(tmp_path, server):
    port = server(tls=True)
    home = _home(tmp_path, port, tls_connection=False)
    proc = subprocess.run([str(FLWR), "run", ".", "local-deployment", "--stream"],
                          cwd=APP_ROOT, env={"FLWR_HOME": str(home), "PATH": "/usr/bin:/bin"},
                          text=True, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        f"scripts/flwr: error: the SuperLink at 127.0.0.1:{port} serves TLS (a deployment "
        "started with --tls), but connection 'local-deployment' in "
        f"{home / 'config.toml'} has insecure = true; ")
    assert "Connection to the SuperLink is unavailable" not in proc.stdout + proc.stderr


def test_a_tls_connection_to_a_plain_superlink_and_a_missing_one(tmp_path, server):
    home = _home(tmp_path, server(tls=False), tls_connection=True)
    problem = connection_problem(home, "stop", ["7", "local-deployment"])
    assert "serves plain HTTP (started without --tls)" in problem and "expects TLS" in problem
    home = _home(tmp_path, 1, tls_connection=False)  # port 1: nothing listens
    assert connection_problem(home, "ls", []) is None  # the default is the managed one
    assert connection_problem(home, "ls", ["local-deployment"]).startswith(
        "nothing answers at 127.0.0.1:1 (connection 'local-deployment'")


def test_positionals_skip_option_values():
    assert positionals([".", "--run-config", "a=1 b=2", "local-deployment", "--stream"]) == [
        ".", "local-deployment"]


def test_the_run_outcome_is_reported_from_its_summary(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    lines = ["🎊 Successfully started run 42\n",
             f"INFO : fedvit: fedavg on test_vit (...); results in {folder}\n"]
    assert outcome(lines) == ("42", folder)
    (folder / "summary.json").write_text(json.dumps({
        "status": "nothing-aggregated", "completed-rounds": [],
        "stop-reason": "every node of round 1 (2 of 2) failed the same way: boom"}))
    assert report("42", folder, stopped=False) == 1
    assert capsys.readouterr().err.startswith(
        "scripts/flwr: run 42 nothing-aggregated after rounds []: every node of round 1")
    (folder / "summary.json").write_text(json.dumps({
        "status": "interrupted", "completed-rounds": [1, 2], "stop-reason": "FlowerExit"}))
    assert report("42", folder, stopped=True) == 1
    assert f"resume with --run-config \"resume-from='{folder}'" in capsys.readouterr().err
    (folder / "summary.json").write_text(json.dumps({
        "status": "complete", "completed-rounds": [1, 2], "stop-reason": ""}))
    assert report("42", folder, stopped=False) == 0
