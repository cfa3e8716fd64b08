"""What a link lab created, recorded before use so that teardown removes exactly that.

``<workdir>/linklab.json``::

    {"tag": ..., "owner": {"pid", "start"}, "workdir": ...,
     "namespaces": [...], "interfaces": [{"ns", "name"}], "processes": [{"pid", "start",
     "name"}], "stopped": false}

A process is identified by its PID and start time (``tools.deploy.processes``), so that a
recycled PID is never signalled. Teardown kills the recorded processes and their
descendants (SIGTERM, then SIGKILL) and deletes the recorded namespaces, which removes
their veths; nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from fedvit.files import write_json
from tools.deploy.linklab.netns import LinkLabError, netns_list, run
from tools.deploy.processes import alive, descendants, start_time, terminate

RECORD = "linklab.json"


class LabRecord:
    """One lab's record, saved (atomically) after every change, and its own child
    processes (``popens``, reaped at teardown)."""

    def __init__(self, workdir: Path, tag: str) -> None:
        self.path = workdir / RECORD
        self.data: dict = {"tag": tag, "owner": {"pid": os.getpid(),
                                                 "start": start_time(os.getpid())},
                           "workdir": str(workdir), "namespaces": [], "interfaces": [],
                           "processes": [], "stopped": False}
        self.popens: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self.save()

    @property
    def stopped(self) -> bool:
        """Torn down already."""
        return bool(self.data["stopped"])

    @property
    def processes(self) -> list[dict]:
        """The recorded processes (``{"pid", "start", "name"}``), live or not."""
        return list(self.data["processes"])

    def save(self) -> None:
        write_json(self.path, self.data, indent=1)

    def add_namespace(self, ns: str) -> None:
        """Create network namespace ``ns`` with ``lo`` up, recorded first: a crash right
        after leaves a name that ``stop`` can delete; a failed add is un-recorded.

        Raises:
            LinkLabError: ``ip netns add`` failed.
        """
        self.data["namespaces"].append(ns)
        self.save()
        try:
            run(["ip", "netns", "add", ns])
        except LinkLabError:
            self.data["namespaces"].remove(ns)
            self.save()
            raise
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def add_interfaces(self, *interfaces: tuple[str, str]) -> None:
        """Record ``(namespace, interface name)`` pairs before they are created."""
        self.data["interfaces"] += [{"ns": ns, "name": name} for ns, name in interfaces]
        self.save()

    def add_process(self, pid: int, name: str) -> dict | None:
        """Record process ``pid`` as ``name``; None (not recorded) when it is gone."""
        st = start_time(pid)
        if st is None:
            return None
        proc = {"pid": pid, "start": st, "name": name}
        with self._lock:
            if not any(p["pid"] == pid and p["start"] == st for p in self.data["processes"]):
                self.data["processes"].append(proc)
                self.save()
        return proc

    def add_popen(self, proc: subprocess.Popen, name: str) -> dict | None:
        """Record a child process this lab started (``add_process``) and reap it later."""
        self.popens.append(proc)
        return self.add_process(proc.pid, name)

    def add_children(self) -> None:
        """Record the live descendants of the recorded processes (e.g. the superexecs,
        which run in sessions of their own)."""
        for proc in self.processes:
            if alive(proc):
                for child in descendants(int(proc["pid"])):
                    self.add_process(child["pid"], child["name"])

    def forget(self, procs: set[tuple[int, str]]) -> None:
        """Take the ``(pid, start)`` processes off the record (they are gone)."""
        with self._lock:
            self.data["processes"] = [p for p in self.data["processes"]
                                      if (p["pid"], p["start"]) not in procs]
            self.save()

    def leftovers(self) -> list[str]:
        """What the lab created that still exists (``leftovers``)."""
        return leftovers(self.data)

    def teardown(self, stop_timeout_s: float) -> None:
        """Tear down everything recorded, reap the lab's children, mark the record stopped.

        Raises:
            LinkLabError: something recorded could not be removed (the message lists it).
        """
        self.add_children()
        problems = teardown(self.data, stop_timeout_s)
        for proc in self.popens:  # reap our own children (no zombies)
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.data["stopped"] = True
        self.save()
        if problems:
            raise LinkLabError("teardown left: " + "; ".join(problems))


def load(path: Path) -> dict:
    """A saved record (``{}`` when missing or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def leftovers(record: Mapping) -> list[str]:
    """What ``record`` lists that still exists: live processes, namespaces, interfaces
    (each a line saying what and where)."""
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
    """Kill the recorded processes and their descendants, delete the recorded namespaces
    (and with them their veths).

    Returns:
        What could not be removed (empty when all went).
    """
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
    left = [x for x in leftovers(record) if not x.startswith("process ")]
    return list(dict.fromkeys(problems + left))
